"""coremltools' generated protobuf classes, loaded without importing coremltools.

`import coremltools` costs seconds and hundreds of MB (it imports torch when torch is installed). The generated
`*_pb2` modules under `coremltools/proto/` only import each other relatively, so we mount that folder as a
package of our own and import `Model_pb2` from it. The message classes are the very classes coremltools uses
(upb caches them per descriptor), so specs move freely between mlopt and coremltools. If coremltools is already
imported we simply reuse its modules.
"""

import importlib
import importlib.util
import os
import sys
import types

_ALIAS = "_mlopt_coremltools_proto"


def _proto_package():
    if "coremltools.proto" in sys.modules:
        return "coremltools.proto"
    if _ALIAS not in sys.modules:
        spec = importlib.util.find_spec("coremltools")
        if spec is None or spec.origin is None:
            raise ImportError("mlopt needs coremltools (pip install 'coremltools>=9,<10')")
        package = types.ModuleType(_ALIAS)
        package.__path__ = [os.path.join(os.path.dirname(spec.origin), "proto")]
        sys.modules[_ALIAS] = package
    return _ALIAS


def _module(name):
    return importlib.import_module(f"{_proto_package()}.{name}")


Model_pb2 = _module("Model_pb2")
MIL_pb2 = _module("MIL_pb2")
