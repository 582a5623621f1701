"""Damaged input packages: truncated and bit-flipped files, replaced weights, mutated Manifest.json, malformed
programs, special files. Every one is bad input or harmless: exit 0 or 2, never 1 (a crash), never a hang."""

import functools
import os
from functools import partial

from .cases import command_for, fixture_names, fixture_path, execute, fuzz_cases, package_case, pick_command, seeded
from .mutators import (
    MANIFEST_MUTATIONS, MODEL, SPECIAL_FILES, WEIGHT_REPLACEMENTS, WEIGHTS, add_special, boundary_lengths, flip_bits,
    mutate_manifest, replace_weights, truncate,
)
from .programs import PROGRAM_MUTATIONS, applies, mutate_program

FIXTURES = fixture_names()
WITH_WEIGHTS = [n for n in FIXTURES if os.path.isfile(os.path.join(fixture_path(n), WEIGHTS))]
TARGETS = {"model": MODEL, "weights": WEIGHTS}


def truncations(seed, rng):
    target, fixture = rng.choice(sorted(TARGETS)), rng.choice(WITH_WEIGHTS)
    size = os.path.getsize(os.path.join(fixture_path(fixture), TARGETS[target]))
    length = rng.choice(boundary_lengths(size, target == "weights")) if rng.random() < 0.6 else rng.randrange(size)
    command = pick_command(rng)
    return package_case(
        f"trunc-{target}-{fixture}-len{length}-seed{seed}-{command}", fixture,
        partial(truncate, target=TARGETS[target], length=length), command,
    )


def bit_flips(seed, rng):
    target, fixture = rng.choice(sorted(TARGETS)), rng.choice(WITH_WEIGHTS)
    region = "any" if target == "model" else rng.choices(["meta", "header", "any"], [6, 1.5, 2.5])[0]
    nbits, command = rng.randint(1, 8), pick_command(rng)
    return package_case(
        f"bitflip-{target}-{region}-{fixture}-bits{nbits}-seed{seed}-{command}", fixture,
        partial(flip_bits, target=TARGETS[target], region=region, nbits=nbits, seed=seed), command,
    )


def variants(family, names, mutation, fixtures, seeds):
    """Each variant of a fixed list, with `seeds` seeds: the fixture picked from `fixtures(variant, seed)`, the
    command from command_for (seed 0 optimize, 1 verify, ...), the damage done by `mutation(variant, seed)`."""

    def make(variant):
        def case(seed, rng):
            fixture, command = rng.choice(fixtures(variant, seed)), command_for(seed, rng)
            return package_case(f"{family}-{variant}-{fixture}-seed{seed}-{command}", fixture, mutation(variant, seed), command)

        return seeded(f"{family}-{variant}", seeds, case)

    return [c for name in names for c in make(name)]


@functools.lru_cache(maxsize=None)
def _model_bytes(fixture):
    with open(os.path.join(fixture_path(fixture), MODEL), "rb") as f:
        return f.read()


def _breakable(variant, seed):
    """Fixtures whose program the mutation can break with this seed (e.g. "eps-nan" needs an epsilon const)."""
    return [f for f in FIXTURES if applies(_model_bytes(f), variant, seed)]


def all_cases(full):
    return (
        seeded("trunc", 300 if full else 45, truncations)
        + seeded("bitflip", 600 if full else 90, bit_flips)
        + variants("weights", WEIGHT_REPLACEMENTS, lambda v, s: partial(replace_weights, how=v), lambda v, s: WITH_WEIGHTS, 8 if full else 2)
        + variants("manifest", MANIFEST_MUTATIONS, lambda v, s: partial(mutate_manifest, how=v), lambda v, s: FIXTURES, 5 if full else 1)
        + variants("program", PROGRAM_MUTATIONS, lambda v, s: partial(mutate_program, how=v, seed=s), _breakable, 8 if full else 2)
        + variants("special", SPECIAL_FILES, lambda v, s: partial(add_special, how=v), lambda v, s: WITH_WEIGHTS, 6 if full else 2)
    )


@fuzz_cases(all_cases)
def test_damaged_input(case, tmp_path):
    execute(case.build(tmp_path), tmp_path)
