"""The restricted unpickler: plain data and NumPy arrays load, anything that could run code is refused."""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmcl.errors import MMCLError
from mmcl.safe_pickle import UnsafePickleError, safe_load, safe_loads


def _score_dict() -> dict:
    rng = np.random.default_rng(0)
    return {
        "S001C001P001R001A001": rng.standard_normal(120).astype(np.float32),
        "S001C001P001R001A002": rng.standard_normal(120),  # float64
        "ints": np.arange(5, dtype=np.int64),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
        "scalar32": np.float32(1.5),
        "scalar64": np.int64(-3),
        "strings": np.array(["a", "bc"]),
        "plain": [1, 2.5, "x", (3, None, True)],
    }


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        if isinstance(a[key], (np.ndarray, np.generic)):
            assert type(a[key]) is type(b[key]) and a[key].dtype == b[key].dtype
            assert np.array_equal(a[key], b[key])
        else:
            assert a[key] == b[key]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_and_numpy_load_under_every_protocol(protocol: int) -> None:
    data = _score_dict()
    _assert_same(data, safe_loads(pickle.dumps(data, protocol=protocol)))


def test_ordered_dict_and_file_loading(tmp_path: Path) -> None:
    data = collections.OrderedDict(a=np.ones(3, np.float32), b=np.zeros(3, np.float32))
    path = tmp_path / "epoch1_test_score.pkl"
    path.write_bytes(pickle.dumps(data))
    loaded = safe_load(path)
    assert isinstance(loaded, collections.OrderedDict) and list(loaded) == ["a", "b"]


@pytest.mark.parametrize("module", [b"numpy.core", b"numpy._core"])
def test_numpy_1x_and_2x_module_paths_both_load(module: bytes) -> None:
    """NumPy 1.x pickles name numpy.core.multiarray, NumPy 2.x numpy._core.multiarray."""
    data = _score_dict()
    raw = pickle.dumps(data, protocol=2)  # GLOBAL opcodes spell the module path as text
    current = b"numpy._core" if b"numpy._core." in raw else b"numpy.core"
    rewritten = raw.replace(current + b".", module + b".")
    assert module + b".multiarray\n_reconstruct" in rewritten
    assert module + b".multiarray\nscalar" in rewritten
    _assert_same(data, safe_loads(rewritten))


def test_protocol5_frombuffer_path_under_both_module_names() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = pickle.dumps({"x": arr}, protocol=5)
    assert b"_frombuffer" in raw
    assert np.array_equal(safe_loads(raw)["x"], arr)


class _RunsCode:
    """Unpickling this would call os.system and create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_reduce_is_refused_without_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"S001C001P001R001A001": np.zeros(3), "evil": _RunsCode(marker)})
    # sanity: the payload really does run code under plain pickle
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "scores.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    message = str(info.value)
    assert str(path) in message and "system" in message and "refused" in message
    assert not marker.exists()


def test_handwritten_global_opcodes_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED2"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(UnsafePickleError, match=r"'os\.system'"):
        safe_loads(payload, source="handmade.pkl")
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match=r"'builtins\.eval'"):
        safe_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")


def test_refused_modules_are_never_imported() -> None:
    payload = b"cmmcl_no_such_module_xyz\nfunc\n(tR."
    with pytest.raises(UnsafePickleError, match="mmcl_no_such_module_xyz.func"):
        safe_loads(payload)


def test_codecs_encode_only_for_latin1() -> None:
    ok = pickle.dumps({"b": b"\x00\xff"}, protocol=2)
    assert safe_loads(ok) == {"b": b"\x00\xff"}
    bad = b"c_codecs\nencode\n(X\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13tR."
    with pytest.raises(UnsafePickleError, match="rot13"):
        safe_loads(bad)


def test_persistent_ids_and_garbage_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UnsafePickleError, match="persistent"):
        safe_loads(b"\x80\x02X\x03\x00\x00\x00pidQ.")
    with pytest.raises(MMCLError, match="not a readable score pickle"):
        safe_loads(b"\x80\x04this is not a pickle", source="junk.pkl")
    with pytest.raises(MMCLError, match="no such file"):
        safe_load(tmp_path / "missing.pkl")
