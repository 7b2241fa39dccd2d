"""Damaged and tampered checkpoints raise CheckpointError naming the file; none runs code."""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from perturbflow.models import get_model, load_model
from perturbflow.models.base import CHECKPOINT_FORMAT, CheckpointError, read_checkpoint

SOURCE = Path(__file__).resolve().parents[2] / "src" / "perturbflow"


class RunsCode:
    """Unpickling this runs ``touch <path>``: proof, if the file appears, that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="module")
def additive_file(tmp_path_factory, screen_data) -> Path:
    dataset, split = screen_data()
    path = tmp_path_factory.mktemp("ckpt") / "additive.npz"
    get_model("additive").fit(dataset, split).save(path)
    return path


@pytest.fixture(scope="module")
def additive_checkpoint(additive_file) -> bytes:
    return additive_file.read_bytes()


@pytest.fixture(scope="module")
def scbig_checkpoint(tmp_path_factory, screen_data) -> bytes:
    import dataclasses

    from _configs import TINY_SCBIG

    dataset, split = screen_data()
    path = tmp_path_factory.mktemp("ckpt") / "scbig.npz"
    config = dataclasses.replace(
        TINY_SCBIG, ae_epochs=1, flow_steps=2, mean_weight=0.0, shape_weight=1.0
    )
    get_model("scbig", config).fit(dataset, split).save(path)
    return path.read_bytes()


def _write(tmp_path: Path, blob: bytes, name: str = "model.npz") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def _npz(**members: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    return buffer.getvalue()


def _header(header: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _members(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as stored:
        return {key: stored[key] for key in stored.files}


def _with_header(blob: bytes, change) -> bytes:
    members = _members(blob)
    header = json.loads(bytes(members["header"]).decode())
    change(header)
    return _npz(**{**members, "header": _header(header)})


@pytest.mark.parametrize(
    "cut", [0, 1, 100, 0.5, -1], ids=["empty", "one_byte", "100_bytes", "half", "last_byte_lost"]
)
def test_truncated_checkpoint_is_a_checkpoint_error(additive_checkpoint, tmp_path, cut):
    size = len(additive_checkpoint)
    end = int(size * cut) if isinstance(cut, float) else (size + cut if cut < 0 else cut)
    path = _write(tmp_path, additive_checkpoint[:end])
    with pytest.raises(CheckpointError, match="model.npz: not a perturbflow checkpoint"):
        load_model(path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.floats(0.0, 1.0, exclude_max=True), flip=st.integers(1, 255))
@example(position=0.994140625, flip=1)  # once hit a member's name in the central directory
def test_corrupted_byte_is_a_checkpoint_error_or_harmless(additive_file, tmp_path, position, flip):
    """A flipped byte anywhere — compressed data included (zlib errors) — is refused as damaged
    unless it hit a byte the reader ignores (zip timestamps): then the arrays are unchanged."""
    additive_checkpoint = additive_file.read_bytes()
    blob = bytearray(additive_checkpoint)
    blob[int(position * len(blob))] ^= flip
    path = _write(tmp_path, bytes(blob))
    try:
        header, arrays = read_checkpoint(path)
    except CheckpointError as error:
        assert "model.npz" in str(error)
        return
    original = _write(tmp_path, additive_checkpoint, "original.npz")
    reference_header, reference = read_checkpoint(original)
    assert header == reference_header
    assert arrays.keys() == reference.keys()
    assert all(np.array_equal(arrays[k], reference[k]) for k in arrays)


@pytest.mark.parametrize("flag", [0x01, 0x20, 0x40])
def test_zip_flags_claiming_encryption_or_patches_are_a_checkpoint_error(
    additive_file, tmp_path, flag
):
    # Bytes 8-9 of a zip's central directory entry are the member's flags, which zipfile trusts:
    # encryption (0x01), compressed patched data (0x20) or strong encryption (0x40) make it raise
    # RuntimeError or NotImplementedError rather than BadZipFile.
    blob = bytearray(additive_file.read_bytes())
    entry = blob.find(b"PK\x01\x02")
    assert entry > 0
    blob[entry + 8] |= flag
    with pytest.raises(CheckpointError, match="model.npz"):
        read_checkpoint(_write(tmp_path, bytes(blob)))


def test_a_damaged_member_name_is_a_checkpoint_error(additive_file, tmp_path):
    # A flipped bit in a central-directory name ("array/..." -> "arraq/...") must not make an
    # array silently disappear from the checkpoint.
    blob = bytearray(additive_file.read_bytes())
    entry = blob.find(b"PK\x01\x02")  # the first member: an array (the header comes last)
    name = entry + 46  # the name follows the 46-byte central directory header
    assert bytes(blob[name : name + 6]) == b"array/"
    blob[name + 4] ^= 0x10
    with pytest.raises(CheckpointError, match="unexpected archive member"):
        read_checkpoint(_write(tmp_path, bytes(blob)))


def test_npz_with_a_pickled_array_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    header = {"format": CHECKPOINT_FORMAT, "model": "additive", "config": {}, "meta": {}}
    blob = _npz(header=_header(header), **{"array/genes": np.array([RunsCode(marker)])})
    with pytest.raises(CheckpointError, match="holds pickled Python objects.*was not loaded"):
        load_model(_write(tmp_path, blob))
    assert not marker.exists()


def test_npz_with_a_pickled_header_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    blob = _npz(header=np.array([RunsCode(marker)], dtype=object))
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_model(_write(tmp_path, blob))
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["raw_pickle", "npy_with_pickle"])
def test_a_pickle_named_npz_is_refused_without_running_it(tmp_path, kind):
    marker = tmp_path / "code-ran"
    if kind == "raw_pickle":
        blob = pickle.dumps(RunsCode(marker))
    else:
        buffer = io.BytesIO()
        np.save(buffer, np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
        blob = buffer.getvalue()
    message = "not an .npz archive; it was not unpickled" if kind == "raw_pickle" else "pickled"
    with pytest.raises(CheckpointError, match=message):
        load_model(_write(tmp_path, blob))
    assert not marker.exists()


def test_header_that_is_not_json_or_not_an_object(additive_checkpoint, tmp_path):
    members = _members(additive_checkpoint)
    for header, message in (
        (np.frombuffer(b"\xff\xfe{", dtype=np.uint8), "can't decode"),
        (np.frombuffer(b"[1, 2]", dtype=np.uint8), "header is not a JSON object"),
    ):
        path = _write(tmp_path, _npz(**{**members, "header": header}))
        with pytest.raises(CheckpointError, match=message):
            load_model(path)


def test_wrong_format_tag_and_unknown_model(additive_checkpoint, tmp_path):
    blob = _with_header(additive_checkpoint, lambda h: h.update(format="something-else"))
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'something-else'"):
        load_model(_write(tmp_path, blob))
    blob = _with_header(additive_checkpoint, lambda h: h.update(model="os.system"))
    with pytest.raises(CheckpointError, match="model 'os.system' is not registered"):
        load_model(_write(tmp_path, blob))


def test_scbig_checkpoint_missing_an_array(scbig_checkpoint, tmp_path):
    members = _members(scbig_checkpoint)
    del members["array/genes"]
    with pytest.raises(CheckpointError, match="damaged or altered scbig checkpoint.*genes"):
        load_model(_write(tmp_path, _npz(**members)))


@pytest.mark.parametrize("model", ["additive", "calibrated_additive"])
def test_mean_shift_checkpoint_missing_an_array(screen_data, tmp_path, model):
    dataset, split = screen_data()
    blob = get_model(model).fit(dataset, split).save(tmp_path / "fitted.npz").read_bytes()
    member = "array/control_mean" if model == "additive" else "array/pooled_leverage"
    members = _members(blob)
    del members[member]
    with pytest.raises(CheckpointError, match=f"lacks the array '{member.split('/')[1]}'.*refit"):
        load_model(_write(tmp_path, _npz(**members)))


def test_scbig_checkpoint_with_weights_of_the_wrong_shape(scbig_checkpoint, tmp_path):
    members = _members(scbig_checkpoint)
    key = next(k for k in members if k.startswith("array/velocity/"))
    members[key] = members[key][:1]
    with pytest.raises(CheckpointError, match="damaged or altered scbig.*size mismatch"):
        load_model(_write(tmp_path, _npz(**members)))
    del members[key]
    with pytest.raises(CheckpointError, match="damaged or altered scbig.*Missing key"):
        load_model(_write(tmp_path, _npz(**members)))


def test_scbig_checkpoint_with_a_tampered_config_or_meta(scbig_checkpoint, tmp_path):
    cases = {
        "unknown field": (lambda h: h["config"].update(not_a_field=1), "not_a_field"),
        "invalid value": (lambda h: h["config"].update(latent_dim=-3), "latent_dim"),
        "meta entry gone": (lambda h: h["meta"].pop("programs"), "programs"),
    }
    for change, message in cases.values():
        path = _write(tmp_path, _with_header(scbig_checkpoint, change))
        with pytest.raises(CheckpointError, match=message):
            load_model(path)


def test_an_intact_checkpoint_still_loads(scbig_checkpoint, tmp_path):
    model = load_model(_write(tmp_path, scbig_checkpoint))
    assert model.name == "scbig" and len(model.genes_) == 40


def _calls(tree: ast.AST, owner: str, function: str):
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == function
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == owner
        ):
            yield node


def _keyword(call: ast.Call, name: str):
    return next(
        (
            k.value.value
            for k in call.keywords
            if k.arg == name and isinstance(k.value, ast.Constant)
        ),
        None,
    )


def test_no_loader_in_the_package_may_unpickle():
    """Every ``np.load`` passes ``allow_pickle=False``, every ``torch.load`` and Lightning fit
    from a checkpoint ``weights_only=True``, and nothing calls ``pickle.load(s)``."""
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(SOURCE)
        offenders += [
            f"{where}:{c.lineno} np.load"
            for c in _calls(tree, "np", "load")
            if _keyword(c, "allow_pickle") is not False
        ]
        offenders += [
            f"{where}:{c.lineno} torch.load"
            for c in _calls(tree, "torch", "load")
            if _keyword(c, "weights_only") is not True
        ]
        offenders += [
            f"{where}:{c.lineno} pickle.{name}"
            for name in ("load", "loads")
            for c in _calls(tree, "pickle", name)
        ]
        offenders += [
            f"{where}:{c.lineno} trainer.fit(ckpt_path=...)"
            for c in _calls(tree, "trainer", "fit")
            if any(k.arg == "ckpt_path" for k in c.keywords)
            and _keyword(c, "weights_only") is not True
        ]
    assert offenders == []
