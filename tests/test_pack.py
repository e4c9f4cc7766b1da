"""diffvae.pack: packs round-trip bit-exactly, the folder cache, one-line errors on bad input."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffvae.data as data_module
from diffvae.data import describe, load_data
from diffvae.errors import DiffvaeError
from diffvae.commands.pack import add_arguments, run
from diffvae.data import pack
from diffvae.pack import MANIFEST, shard_of


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVAE_CACHE", str(tmp_path / "cache"))


def _write_folder(root, count=12, size=10, colour=True, seed=0):
    """PNGs in two class subfolders, random pixels (RGB or grey)."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        folder = root / ("cats" if k % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        shape = (size, size, 3) if colour else (size, size)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{k:03d}.png")
    return root


def _write_npz(path, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8), y=rng.integers(0, 4, 40))
    return path


def _assert_same_dataset(a, b):
    for part in ("train", "test"):
        assert torch.equal(getattr(a, part), getattr(b, part)), part
    for part in ("train_labels", "test_labels"):
        x, y = getattr(a, part), getattr(b, part)
        assert (x is None and y is None) or torch.equal(x, y), part
    assert a.name == b.name and a.num_classes == b.num_classes and a.class_names == b.class_names
    assert list(a.attributes) == list(b.attributes)
    assert all(torch.equal(a.attributes[k], b.attributes[k]) for k in a.attributes)
    assert a.content_hash() == b.content_hash()


def _in_memory(ds):
    """A copy of a data set that shares no memory (and no mapped file) with it."""
    return dataclasses.replace(ds, train=ds.train.clone(), test=ds.test.clone(), backing=None)


def _mapped_file(tensor):
    """The file whose memory mapping holds the tensor's data (from /proc/self/maps), else None."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(v, 16) for v in fields[0].split("-"))
            if start <= address < end and len(fields) == 6:
                return Path(fields[5].strip())
    return None


def _source_spec(kind, tmp_path):
    if kind == "folder":
        return f"folder:{_write_folder(tmp_path / 'images')}"
    if kind == "npz":
        return f"npz:{_write_npz(tmp_path / 'data.npz')}"
    return kind


@pytest.mark.parametrize("kind", ["digits", "folder", "npz", "shapes"])
def test_pack_round_trips_bit_exactly(kind, tmp_path):
    spec = _source_spec(kind, tmp_path)
    source = load_data(spec)
    out = pack(spec, tmp_path / "pack")
    packed = load_data(f"packed:{out}")
    _assert_same_dataset(packed, source)
    assert shard_of(packed.train).path == out / "train.u8"
    assert _mapped_file(packed.train) == out / "train.u8"  # its memory is the file's mapping, not a copy
    # what `data info` prints is the same for both: image count, split, labels, pixel statistics, content hash
    expected = describe(source)
    assert describe(load_data(f"packed:{out}")) == expected and "hash        " + source.content_hash() in expected


def test_pack_options_limit_binarize_and_the_split_it_was_made_with(tmp_path):
    out = pack("digits", tmp_path / "pack", seed=3, limit=100, binarize=True)
    source = load_data("digits", seed=3, limit=100, binarize=True)
    _assert_same_dataset(load_data(f"packed:{out}", seed=3), source)
    with pytest.raises(DiffvaeError, match="split_seed 3, not 0"):
        load_data(f"packed:{out}")
    # limit and binarize on a packed set act as on the source: the first N training images, thresholded
    full = pack("digits", tmp_path / "full")
    _assert_same_dataset(load_data(f"packed:{full}", limit=50, binarize=True), load_data("digits", limit=50, binarize=True))
    with pytest.raises(DiffvaeError, match="holds 8×8 images"):
        load_data(f"packed:{full}", size=16)


def test_pack_cli_command_writes_the_pack_data_info_reads(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["digits", "--out", str(tmp_path / "p"), "--limit", "200"])) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "200 train + 180 test" in line
    assert load_data(f"packed:{tmp_path / 'p'}").content_hash() == load_data("digits", limit=200).content_hash()
    with pytest.raises(DiffvaeError, match="already holds a pack; pass --force"):
        run(parser.parse_args(["digits", "--out", str(tmp_path / "p")]))
    assert run(parser.parse_args(["digits", "--out", str(tmp_path / "p"), "--force"])) == 0
    assert load_data(f"packed:{tmp_path / 'p'}").train.shape[0] == 1617
    assert sorted(os.listdir(tmp_path)) == ["p"]  # no temporary folder left behind
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o777 & ~mask  # as mkdir would make it, not mkdtemp's 0700


# ---------------------------------------------------------------------------- the folder cache


def _cache_entries(tmp_path):
    packs = tmp_path / "cache" / "packs"
    return sorted(packs.iterdir()) if packs.exists() else []


def _forbid_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the folder was decoded although its cache entry was usable")

    monkeypatch.setattr(data_module, "_read_folder", refuse)


def test_folder_cache_is_reused_while_the_folder_is_unchanged(tmp_path, monkeypatch):
    root = _write_folder(tmp_path / "images")
    first = load_data(f"folder:{root}", size=8)
    (entry,) = _cache_entries(tmp_path)
    with monkeypatch.context() as patch:
        _forbid_decoding(patch)
        again = load_data(f"folder:{root}", size=8)
    _assert_same_dataset(again, first)
    assert shard_of(again.train) is not None and _cache_entries(tmp_path) == [entry]
    # another resize option is another entry; the first stays
    load_data(f"folder:{root}", size=6)
    assert len(_cache_entries(tmp_path)) == 2


def test_folder_cache_is_rebuilt_when_an_image_changes(tmp_path):
    root = _write_folder(tmp_path / "images")
    before = load_data(f"folder:{root}", size=8)
    changed = root / "dogs" / "000.png"
    Image.fromarray(np.full((10, 10, 3), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse clocks
    after = load_data(f"folder:{root}", size=8)
    assert after.content_hash() != before.content_hash()
    everything = torch.cat([after.train, after.test])
    assert bool((everything == 7).flatten(1).all(1).any())  # the new image is in the data
    assert len(_cache_entries(tmp_path)) == 1  # rebuilt in place, not accumulated


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "delete_labels"])
def test_a_damaged_folder_cache_is_rebuilt_not_trusted(damage, tmp_path):
    root = _write_folder(tmp_path / "images")
    reference = _in_memory(load_data(f"folder:{root}", size=8))  # the damage below must not reach it
    (entry,) = _cache_entries(tmp_path)
    shard = entry / "train.u8"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-5])
    elif damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[3] ^= 0xFF
        shard.write_bytes(bytes(raw))
    elif damage == "manifest":
        (entry / MANIFEST).write_text("{not json")
    else:
        (entry / "labels.safetensors").unlink()
    rebuilt = load_data(f"folder:{root}", size=8)
    _assert_same_dataset(rebuilt, reference)
    assert shard.read_bytes() == reference.train.numpy().tobytes()  # the entry on disk is sound again


def test_unwritable_cache_still_loads_the_folder(tmp_path, monkeypatch):
    root = _write_folder(tmp_path / "images", colour=False)
    (tmp_path / "blocker").write_text("a file where the cache folder would go")
    monkeypatch.setenv("DIFFVAE_CACHE", str(tmp_path / "blocker"))
    ds = load_data(f"folder:{root}")
    assert ds.image_shape == (1, 10, 10) and shard_of(ds.train) is None  # the images' own size


# ---------------------------------------------------------------------------- bad input: one line each


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.fixture
def digits_pack(tmp_path):
    return pack("digits", tmp_path / "pack")


def test_missing_or_wrong_pack_directory(tmp_path):
    with pytest.raises(DiffvaeError) as e:
        load_data(f"packed:{tmp_path / 'nope'}")
    assert "no such directory" in _one_line(e)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiffvaeError, match="not a directory"):
        load_data(f"packed:{tmp_path / 'file'}")
    with pytest.raises(DiffvaeError, match="not a diffvae pack"):
        load_data(f"packed:{tmp_path}")
    with pytest.raises(DiffvaeError, match="needs a pack directory"):
        load_data("packed:")


@pytest.mark.parametrize("edit, expected", [
    (lambda m: "{garbage", "is not valid JSON"),
    (lambda m: json.dumps({**m, "train_size": "many"}), "field 'manifest.train_size' must be an integer"),
    (lambda m: json.dumps({k: v for k, v in m.items() if k != "content_hash"}), "field 'content_hash' is missing"),
    (lambda m: json.dumps({**m, "format": "zip"}), "not a diffvae pack manifest"),
    (lambda m: json.dumps({**m, "image_shape": [1, 8]}), "image_shape"),
    (lambda m: json.dumps({**m, "train_size": m["train_size"] + 1}), "truncated"),
    (lambda m: json.dumps({**m, "num_classes": 3}), "class_names"),
])
def test_damaged_manifest_is_one_line(digits_pack, edit, expected):
    path = digits_pack / MANIFEST
    path.write_text(edit(json.loads(path.read_text())))
    with pytest.raises(DiffvaeError) as e:
        load_data(f"packed:{digits_pack}")
    assert expected in _one_line(e)


def test_truncated_or_altered_shard(digits_pack):
    shard = digits_pack / "test.u8"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-1])
    with pytest.raises(DiffvaeError) as e:
        load_data(f"packed:{digits_pack}")
    assert "test.u8 is truncated" in _one_line(e)
    altered = bytearray(raw)
    altered[10] ^= 1
    shard.write_bytes(bytes(altered))
    ds = load_data(f"packed:{digits_pack}")  # the size is right: only the hash can tell
    with pytest.raises(DiffvaeError) as e:
        ds.content_hash()
    assert "is damaged" in _one_line(e)


def test_out_dir_that_is_a_file_or_a_foreign_directory_is_refused_untouched(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep me")
    with pytest.raises(DiffvaeError) as e:
        pack("digits", target)
    assert "is a file" in _one_line(e) and target.read_text() == "keep me"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DiffvaeError, match="not a diffvae pack"):
        pack("digits", foreign, force=True)
    assert os.listdir(foreign) == ["notes.txt"]


def test_bad_spec_or_option_is_refused_before_the_disk_is_touched(tmp_path):
    for spec, kwargs in (("nonsense", {}), ("digits", {"test_fraction": 2.0}), (f"npz:{tmp_path / 'no.npz'}", {})):
        with pytest.raises(DiffvaeError):
            pack(spec, tmp_path / "out", **kwargs)
    assert sorted(os.listdir(tmp_path)) == []


def test_a_late_weakref_callback_never_forgets_a_newer_mapped_tensor(tmp_path):
    """A dead mapped tensor's weakref callback must drop only its own entry, never a newer tensor's under the
    same id (or the loader would fall back to faulting the mapping in)."""
    import weakref

    import numpy as np

    from diffvae.pack import _MAPPED, _forget, map_shard, shard_of

    path = tmp_path / "train.u8"
    np.arange(2 * 3 * 4 * 4, dtype=np.uint8).tofile(path)
    tensor = map_shard(path, (2, 3, 4, 4))
    assert shard_of(tensor) is not None

    class Dead:
        pass

    stale = weakref.ref(Dead())  # the callback of another (dead) tensor that had the same id
    _forget(stale, id(tensor))
    assert shard_of(tensor) is not None and id(tensor) in _MAPPED
    _forget(_MAPPED[id(tensor)][0], id(tensor))  # its own callback does drop it
    assert shard_of(tensor) is None


def test_out_through_a_missing_folder_and_dotdot_is_the_folder_above(tmp_path):
    """Regression (issue 27, hostile pass): ``--out missing/..`` was taken for a new path; the pack then moved the folder
    above it (the user's files) into a temporary folder of its own before failing."""
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(DiffvaeError, match="not a diffvae pack"):
        pack("digits", tmp_path / "missing" / "..", limit=50)
    assert {p.name for p in tmp_path.iterdir()} - {"cache"} == {"notes.txt"}


def test_a_place_where_no_folder_can_be_made_is_one_line(tmp_path, monkeypatch):
    """Regression (issue 27, hostile pass): --out under /sys (EPERM even for root, whom os.access lets through) was an
    internal error."""
    import diffvae.pack as pack_module

    def forbidden(*args, **kwargs):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(pack_module.tempfile, "mkdtemp", forbidden)
    with pytest.raises(DiffvaeError, match=r"cannot write .*p: Operation not permitted"):
        pack("digits", tmp_path / "p", limit=50)
    assert not (tmp_path / "p").exists()


def test_a_failed_pack_removes_the_folders_it_made_for_out(tmp_path, monkeypatch):
    """Regression (issue 27, hostile pass): a full disk under --out deep1/deep2/pack left deep1/deep2 behind."""
    import diffvae.pack as pack_module

    class FullFile:
        def __init__(self, *args, **kwargs):
            pass

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            pass

    (tmp_path / "kept").mkdir()
    monkeypatch.setattr(pack_module, "open", FullFile, raising=False)
    for out in (tmp_path / "deep1" / "deep2" / "pack", tmp_path / "kept" / "deep" / "pack"):
        with pytest.raises(DiffvaeError, match="No space left on device"):
            pack("digits", out, limit=50)
    assert {p.name for p in tmp_path.iterdir()} - {"cache"} == {"kept"} and list((tmp_path / "kept").iterdir()) == []
