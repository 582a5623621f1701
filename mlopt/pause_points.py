"""Named points of a run where a test can hold it, to send a signal exactly there.

A signal test that sends its signal after a delay tests whatever moment the delay happens to hit, which depends
on the machine's load. With `MLOPT_PAUSE_AT=<point>:<ready fd>:<resume fd>` in its environment, a run that
reaches `pause(<point>)` writes the point's name to the ready fd and waits until the test writes to or closes the
resume fd (or, for a point given `cancelled`, until that returns True): the test reads the name, sends the signal,
and lets the run go on. Without the variable `pause` returns at once. The points:

- "import": while the command line's modules are being imported (inside the import machinery);
- "copy-start": inside the step that starts the copy thread, signals held, the copy already running;
- "copy": in the copy thread, after the first file of the output was copied, before any other;
- "weights": after a weight file that receives new blobs (a split head) was updated, before it is flushed;
- "rename": inside the step that puts the output in place, signals blocked, just before the rename;
- "after-rename": just after that step, the output complete and in place.
"""

import os
import select

_SPEC = os.environ.get("MLOPT_PAUSE_AT")


def pause(point, cancelled=None):
    if _SPEC is None:
        return
    name, ready, resume = _SPEC.rsplit(":", 2)
    if name != point:
        return
    try:
        os.write(int(ready), point.encode() + b"\n")
    except OSError:  # the test has gone (or closed its end after its one pause): nothing to wait for
        return
    poller = select.poll()  # not select.select: the descriptors a test passes may be numbered 1024 or more
    poller.register(int(resume), select.POLLIN)
    while True:
        if poller.poll(10 if cancelled is not None else None):
            os.read(int(resume), 1)
            return
        if cancelled is not None and cancelled():
            return
