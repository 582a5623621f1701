"""Packages in a Hugging Face hub cache: read through the links into the repository's own `blobs/`, nothing else.

The cache is built by hand (hub_layout.py), the way huggingface_hub lays it out. Each test
checks what mlopt may never do: change anything in the cache, follow any other link, leave anything behind, or
write a link into an output.
"""

import os
import shutil
import stat

import pytest

from conftest import fixture_path, op_types
from fuzz.tree import staging_leftovers, tree_digest
from hub_layout import REPO, REVISION, WEIGHTS, hub_cache
from mlopt import BadInputError, optimize_package
from mlopt.cli import main


def blob_of(package, rel):
    """The blob file the link `rel` of `package` stands for."""
    return os.path.realpath(os.path.join(package, rel))


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_real_copy(out, fixture="hf_fp16_ios17"):
    """`out` holds only folders and regular files, its unchanged files byte-identical to the fixture's."""
    for folder, dirs, files in os.walk(out):
        for name in dirs + files:
            mode = os.lstat(os.path.join(folder, name)).st_mode
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), os.path.join(folder, name)
    for rel in ("Manifest.json", WEIGHTS):
        with open(os.path.join(out, rel), "rb") as a, open(os.path.join(fixture_path(fixture), rel), "rb") as b:
            assert a.read() == b.read(), rel


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hub"


# -- a good cached package: every command ---------------------------------------------------------------------------
def test_optimize_reads_through_the_blobs_and_writes_real_files(cache, tmp_path, capsys):
    package = hub_cache(cache)
    before = tree_digest(cache)
    out = tmp_path / "out.mlpackage"
    code, text, err = cli(capsys, "optimize", package, out)
    assert code == 0, err
    assert "1 rewritten, 0 left alone" in text
    plain = tmp_path / "plain.mlpackage"
    assert cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), plain)[0] == 0
    assert op_types(str(out)) == op_types(str(plain)) and "layer_norm" in op_types(str(out))
    assert_real_copy(out)
    assert tree_digest(cache) == before and staging_leftovers(tmp_path) == []


def test_optimize_output_loads_with_coremltools_program_loader(cache, tmp_path, capsys):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    out = tmp_path / "out.mlpackage"
    assert cli(capsys, "optimize", hub_cache(cache), out)[0] == 0
    model = ct.models.MLModel(str(out), skip_model_load=True)
    spec = model.get_spec()
    program = load(spec, spec.specificationVersion, model.weights_dir)
    assert "layer_norm" in [op.op_type for op in program.functions["main"].operations]


def test_link_option_hard_links_the_blobs_never_the_links(cache, tmp_path, capsys):
    package = hub_cache(cache)
    before = tree_digest(cache)
    out = tmp_path / "out.mlpackage"
    code, text, err = cli(capsys, "optimize", package, out, "--link")
    assert code == 0, err
    assert_real_copy(out)
    for rel in ("Manifest.json", WEIGHTS):
        assert os.stat(out / rel).st_ino == os.stat(blob_of(package, rel)).st_ino, rel
    assert tree_digest(cache) == before


def test_inspect_and_verify_read_the_cached_package(cache, tmp_path, capsys):
    package = hub_cache(cache)
    before = tree_digest(cache)
    code, text, err = cli(capsys, "inspect", package)
    plain_code, plain_text, _ = cli(capsys, "inspect", fixture_path("hf_fp16_ios17"))
    assert code == plain_code == 0, err
    assert text.splitlines()[1:] == plain_text.splitlines()[1:]  # the same analysis; only the path differs
    assert text.splitlines()[0] == f"mlopt inspect {package}"
    out = tmp_path / "out.mlpackage"
    assert cli(capsys, "optimize", package, out, "-q")[0] == 0
    code, text, err = cli(capsys, "verify", package, out)
    assert code == 0, err
    assert text.splitlines()[-1] == "  all outputs agree"
    assert tree_digest(cache) == before


def test_batch_finds_the_cached_package_and_mirrors_its_path(cache, tmp_path, capsys):
    package = hub_cache(cache)
    second = hub_cache(cache, "decoder_fp16_ios17", repo="models--someone--decoder", in_repo="decoder.mlpackage")
    before = tree_digest(cache)
    out_dir = tmp_path / "outdir"
    code, text, err = cli(capsys, "optimize", cache, "--out-dir", out_dir)
    assert code == 0, err
    assert text.splitlines()[-1] == "2 models: 2 rewritten, 0 unchanged; 6 chains rewritten"
    first_out = out_dir / os.path.relpath(package, cache)
    assert "layer_norm" in op_types(str(first_out))
    assert_real_copy(first_out)
    assert_real_copy(out_dir / os.path.relpath(second, cache), "decoder_fp16_ios17")
    assert tree_digest(cache) == before and staging_leftovers(tmp_path) == []


def test_python_api_optimize_package(cache, tmp_path):
    package = hub_cache(cache)
    before = tree_digest(cache)
    report = optimize_package(package, tmp_path / "out.mlpackage")
    assert report.rewrites == 1 and report.written
    assert_real_copy(tmp_path / "out.mlpackage")
    assert tree_digest(cache) == before


def test_python_api_optimize_of_a_model_coremltools_loaded_from_the_cache(cache):
    import coremltools as ct

    import mlopt

    package = hub_cache(cache)
    blobs = tree_digest(os.path.join(cache, REPO, "blobs"))
    model = ct.models.MLModel(package, skip_model_load=True)
    # coremltools itself rewrites the package's Manifest.json on load (the link becomes a file of the same bytes)
    after_load = tree_digest(cache)
    new, report = mlopt.optimize(model, report=True)
    assert report.rewrites == 1
    assert "layer_norm" in [op.type for op in new.get_spec().mlProgram.functions["main"].block_specializations["CoreML7"].operations]
    with open(os.path.join(new.weights_dir, "weight.bin"), "rb") as a, open(fixture_path("hf_fp16_ios17") + "/" + WEIGHTS, "rb") as b:
        assert a.read() == b.read()
    assert not os.path.islink(os.path.join(new.weights_dir, "weight.bin"))
    assert tree_digest(cache) == after_load  # mlopt changed nothing
    assert tree_digest(os.path.join(cache, REPO, "blobs")) == blobs


def test_a_package_named_through_a_link_to_the_snapshot(cache, tmp_path, capsys):
    package = hub_cache(cache)
    (tmp_path / "mine.mlpackage").symlink_to(package)
    out = tmp_path / "out.mlpackage"
    code, _, err = cli(capsys, "optimize", tmp_path / "mine.mlpackage", out)
    assert code == 0, err
    assert_real_copy(out)


# -- every other link is refused --------------------------------------------------------------------------------------
UPS = "../" * 7  # from the weight file's folder to the repository folder: snapshots/REV/models/tiny.mlpackage/Data/com.apple.CoreML/weights


def _climbs_out(package, cache):
    shutil.copy(blob_of(package, WEIGHTS), cache / "elsewhere")  # what the link would reach
    return UPS + "blobs/../../elsewhere", None


def _other_repository(package, cache):
    other = cache / "models--other--repo" / "blobs"
    other.mkdir(parents=True)
    shutil.copy(blob_of(package, WEIGHTS), other / "theirs")
    return "../" * 8 + "models--other--repo/blobs/theirs", None


def _absolute(package, cache):
    return blob_of(package, WEIGHTS), None  # even to the right blob


def _too_few_dots(package, cache):
    return UPS[3:] + "blobs/" + os.path.basename(blob_of(package, WEIGHTS)), None


def _blob_is_a_link(package, cache):
    os.symlink(os.path.basename(blob_of(package, WEIGHTS)), cache / REPO / "blobs" / "alias")
    return UPS + "blobs/alias", "which is itself a symbolic link; mlopt follows one link into blobs/ and no further"


def _blob_is_a_fifo(package, cache):
    os.mkfifo(cache / REPO / "blobs" / "fifo")
    return UPS + "blobs/fifo", "which is a FIFO; mlopt never opens special files"


def _blob_is_a_folder(package, cache):
    (cache / REPO / "blobs" / "folder").mkdir()
    shutil.copy(blob_of(package, WEIGHTS), cache / REPO / "blobs" / "folder" / "weight.bin")
    return UPS + "blobs/folder", "which is a folder; mlopt follows links to files only"


def _blob_missing(package, cache):
    return UPS + "blobs/" + "0" * 64, "which does not exist (an unfinished download?)"


BAD_LINKS = {
    "climbs-out-of-blobs": _climbs_out,
    "another-repositorys-blobs": _other_repository,
    "absolute": _absolute,
    "too-few-dots": _too_few_dots,
    "blob-is-a-link": _blob_is_a_link,
    "blob-is-a-fifo": _blob_is_a_fifo,
    "blob-is-a-folder": _blob_is_a_folder,
    "blob-missing": _blob_missing,
}


def bad_cache(cache, how):
    """A cached package whose weight link is replaced by the bad link `how` makes; (package, link, expected error)."""
    package = hub_cache(cache)
    link = os.path.join(package, WEIGHTS)
    target, problem = BAD_LINKS[how](package, cache)
    os.remove(link)
    os.symlink(target, link)
    blobs = os.path.join(cache, REPO, "blobs")
    if problem is None:
        problem = (f"is a symbolic link (to {target}) that does not lead to a file in its Hugging Face cache "
                   f"repository's {blobs}; mlopt follows links inside a package only there")
    else:
        problem = f"is a symbolic link to {os.path.join(blobs, target.rsplit('/', 1)[1])}, {problem}"
    return package, link, f"{link}: {problem}"


@pytest.mark.parametrize("how", sorted(BAD_LINKS))
@pytest.mark.parametrize("command", ["optimize", "inspect", "verify"])
def test_every_other_link_is_refused_with_one_line(cache, tmp_path, capsys, how, command):
    package, link, error = bad_cache(cache, how)
    before = tree_digest(cache)
    out = tmp_path / "out.mlpackage"
    argv = {"optimize": [package, out], "inspect": [package], "verify": [package, package]}[command]
    code, text, err = cli(capsys, command, *argv)
    assert (code, err) == (2, f"mlopt: error: {error}\n")
    assert tree_digest(cache) == before
    assert not out.exists() and staging_leftovers(tmp_path) == []


@pytest.mark.parametrize("how", sorted(BAD_LINKS))
def test_batch_and_the_python_api_refuse_the_same_links(cache, tmp_path, capsys, how):
    package, link, error = bad_cache(cache, how)
    before = tree_digest(cache)
    code, text, err = cli(capsys, "optimize", cache, "--out-dir", tmp_path / "outdir")
    assert code == 2
    assert f"bad input: {error}" in text
    with pytest.raises(BadInputError) as refused:
        optimize_package(package, tmp_path / "out.mlpackage")
    assert str(refused.value) == error
    assert tree_digest(cache) == before
    assert not (tmp_path / "out.mlpackage").exists() and not (tmp_path / "outdir").exists()
    assert staging_leftovers(tmp_path) == []


def test_a_link_to_a_folder_in_blobs_in_place_of_a_folder(cache, tmp_path, capsys):
    package = hub_cache(cache)
    shutil.copytree(os.path.join(package, "Data"), cache / REPO / "blobs" / "data", symlinks=True)
    shutil.rmtree(os.path.join(package, "Data"))
    os.symlink("../../../../blobs/data", os.path.join(package, "Data"))
    before = tree_digest(cache)
    code, _, err = cli(capsys, "inspect", package)
    assert (code, err) == (2, f"mlopt: error: {package}/Data: is a symbolic link to {cache / REPO / 'blobs' / 'data'}, "
                              "which is a folder; mlopt follows links to files only\n")
    assert tree_digest(cache) == before


@pytest.mark.parametrize("layout", ["no-repository-folder", "blobs-is-a-link", "package-outside-snapshots"])
def test_a_look_alike_layout_is_no_cache(tmp_path, capsys, layout):
    """Links of the cache's form count only inside a real `models--*/snapshots/` with a real `blobs/` beside it."""
    if layout == "no-repository-folder":
        package = hub_cache(tmp_path, repo="plain")
    elif layout == "blobs-is-a-link":
        package = hub_cache(tmp_path / "hub")
        os.rename(tmp_path / "hub" / REPO / "blobs", tmp_path / "store")
        os.symlink(tmp_path / "store", tmp_path / "hub" / REPO / "blobs")
    else:
        package = hub_cache(tmp_path / "hub", in_repo="tiny.mlpackage")
        os.rename(tmp_path / "hub" / REPO / "snapshots" / REVISION, tmp_path / "hub" / REPO / REVISION)
        package = str(tmp_path / "hub" / REPO / REVISION / "tiny.mlpackage")
    manifest = os.path.join(package, "Manifest.json")
    code, _, err = cli(capsys, "inspect", package)
    assert (code, err) == (2, f"mlopt: error: {manifest}: is a symbolic link (to {os.readlink(manifest)}); mlopt follows "
                              "no link inside a package, so nothing outside it is read (resolve links first, e.g. cp -RL)\n")
