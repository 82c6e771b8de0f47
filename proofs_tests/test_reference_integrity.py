"""A stored reference never loses data (refattn.distributed.reference, load_reference,
verify_reference and ``refattn reference``): completion is recorded only after every output is
written, reduced and checksummed; a changed output is refused; ``--overwrite`` deletes only a
refattn reference; every damaged folder or wrong input is a one-line error, and an interrupted
folder resumes. Deterministic (kills and full disks are simulated at the exact point they hit)."""

import errno
import json
import os

import numpy as np
import pytest

import refattn.distributed as dist
from refattn.cli import main
from refattn.distributed import input_array, load_reference, reference, verify_reference


def _inputs(T=300, S=260, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, 16)), rng.normal(size=(S, 16)), rng.normal(size=(S, 8)), rng.normal(size=(T, 8))


@pytest.fixture
def stored(tmp_path):
    q, k, v, dout = _inputs()
    reference(q, k, v, out=tmp_path / "ref", causal=True, dout=dout, shard=128, progress=False)
    return tmp_path / "ref", (q, k, v, dout)


# ----------------------------------------------------------------------------- completion
@pytest.mark.parametrize("where", ["reduce", "complete"])
def test_a_kill_after_the_last_shard_leaves_a_folder_that_resumes(tmp_path, monkeypatch, where):
    """Killed while dk, dv are summed, or just before completion is written: the folder is unfinished
    (refused by load_reference), and the same command finishes it with the gradients a clean run gives."""
    q, k, v, dout = _inputs()
    whole = reference(q, k, v, out=tmp_path / "whole", dout=dout, shard=128, progress=False)
    real_reduce, real_write = dist._reduce_partials, dist._write_meta

    def killed_reduce(*args):
        raise KeyboardInterrupt

    def killed_write(path, meta):
        if meta.get("complete"):
            raise KeyboardInterrupt
        real_write(path, meta)

    if where == "reduce":
        monkeypatch.setattr(dist, "_reduce_partials", killed_reduce)
    else:
        monkeypatch.setattr(dist, "_write_meta", killed_write)
    with pytest.raises(KeyboardInterrupt):
        reference(q, k, v, out=tmp_path / "r", dout=dout, shard=128, progress=False)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["done"] == [0, 1, 2] and not meta["complete"]
    with pytest.raises(ValueError, match="unfinished"):
        load_reference(tmp_path / "r")
    monkeypatch.setattr(dist, "_reduce_partials", real_reduce)
    monkeypatch.setattr(dist, "_write_meta", real_write)
    resumed = reference(q, k, v, out=tmp_path / "r", dout=dout, shard=128, progress=False)
    assert resumed.complete and not list((tmp_path / "r").glob("*.part*"))
    for name in ("out", "lse", "dq", "dk", "dv"):
        assert np.array_equal(resumed[name], whole[name]), name
    assert np.abs(resumed["dk"]).max() > 0


def test_a_shard_whose_partial_sums_are_gone_is_computed_again(tmp_path, monkeypatch):
    q, k, v, dout = _inputs()
    whole = reference(q, k, v, out=tmp_path / "whole", dout=dout, shard=128, progress=False)
    monkeypatch.setattr(dist, "_reduce_partials", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        reference(q, k, v, out=tmp_path / "r", dout=dout, shard=128, progress=False)
    os.unlink(tmp_path / "r" / "dv.part1.npy")
    monkeypatch.undo()
    resumed = reference(q, k, v, out=tmp_path / "r", dout=dout, shard=128, progress=False)
    assert np.array_equal(resumed["dv"], whole["dv"]) and np.array_equal(resumed["dk"], whole["dk"])


# ----------------------------------------------------------------------------- outputs checked
def _flip_byte(file, at=-5):
    data = bytearray(file.read_bytes())
    data[at] ^= 0x01
    file.write_bytes(bytes(data))


def _zero_lse(folder):
    m = np.load(folder / "lse.npy", mmap_mode="r+")
    m[...] = 0
    m.flush()


def _truncate(folder):
    file = folder / "out.npy"
    file.write_bytes(file.read_bytes()[:-8])


def _pickled(folder):
    np.save(folder / "out.npy", np.array([{"payload": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("damage,message", [
    (lambda f: _flip_byte(f / "out.npy"), "out.npy .* does not match the checksum"),
    (_zero_lse, "lse.npy .* does not match the checksum"),
    (_truncate, r"out.npy: .*\(truncated or corrupt\)"),
    (lambda f: os.unlink(f / "dk.npy"), "dk.npy' is missing"),
    (_pickled, "out.npy: .* holds object"),
    (lambda f: (f / "meta.json").write_text("{not json"), "meta.json' is unreadable or corrupt"),
    (lambda f: (f / "meta.json").write_text("[1, 2]"), "not a refattn reference manifest"),
])
def test_a_damaged_reference_is_refused_by_load_and_verify(stored, capsys, damage, message):
    folder, (q, k, v, dout) = stored
    damage(folder)
    with pytest.raises(ValueError, match=message):
        load_reference(folder)
    for name, a in zip(("q", "k", "v", "dout"), (q, k, v, dout)):
        np.save(folder.parent / f"{name}.npy", a)
    argv = ["reference", *[x for n in ("q", "k", "v") for x in (f"--{n}", str(folder.parent / f"{n}.npy"))],
            "--backward", str(folder.parent / "dout.npy"), "--out", str(folder), "--verify"]
    assert main(argv) == 1
    assert "NOT VERIFIED" in capsys.readouterr().out


def test_an_intact_reference_verifies_and_skipping_the_read_is_a_flag(stored):
    folder, (q, k, v, dout) = stored
    found = verify_reference(folder, q, k, v, dout, blocks=3, seed=0)
    assert len(found["blocks"]) == 3 and found["worst"] < 1
    _flip_byte(folder / "out.npy")
    load_reference(folder, check_outputs=False)  # headers still checked, bytes not read
    with pytest.raises(ValueError, match="checksum"):
        load_reference(folder)


def test_verify_recomputes_rows_a_forged_manifest_cannot_hide(stored):
    """Outputs changed and their checksums rewritten to match: only computing rows again finds it."""
    folder, (q, k, v, dout) = stored
    m = np.load(folder / "out.npy", mmap_mode="r+")
    m[..., :, 0] += 1e-6  # every block is wrong, so any draw of blocks finds it
    m.flush()
    meta = json.loads((folder / "meta.json").read_text())
    meta["outputs"]["out"] = dist.checksum(np.load(folder / "out.npy"))
    (folder / "meta.json").write_text(json.dumps(meta))
    load_reference(folder)  # the checksums agree now
    with pytest.raises(ValueError, match="out rows .* differ from the oracle's"):
        verify_reference(folder, q, k, v, dout, blocks=1)


def test_verify_needs_the_mask_the_reference_was_computed_with(tmp_path):
    q, k, v, _ = _inputs()
    mask = np.random.default_rng(1).random((300, 260)) < 0.8
    reference(q, k, v, out=tmp_path / "r", mask=mask, shard=128, progress=False)
    assert verify_reference(tmp_path / "r", q, k, v, mask=mask, seed=1)["worst"] < 1
    with pytest.raises(ValueError, match="^mask: this reference was computed with one"):
        verify_reference(tmp_path / "r", q, k, v)
    with pytest.raises(ValueError, match="^mask: not the one"):
        verify_reference(tmp_path / "r", q, k, v, mask=~mask)


# ----------------------------------------------------------------------------- the folder
def test_overwrite_replaces_only_a_refattn_reference(stored, tmp_path):
    folder, (q, k, v, _) = stored
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="^out: .* is not a refattn reference folder .*thesis.tex"):
        reference(q, k, v, out=mine, overwrite=True, progress=False)
    assert (mine / "thesis.tex").read_text() == "years of work"
    (folder / "notes.txt").write_text("mine")  # a reference folder someone added a file to
    with pytest.raises(ValueError, match="not a refattn reference folder .*notes.txt"):
        reference(q, k, v, out=folder, overwrite=True, progress=False)
    assert (folder / "notes.txt").exists()
    os.unlink(folder / "notes.txt")
    assert reference(q, k, v, out=folder, overwrite=True, shard=128, progress=False).complete


@pytest.mark.parametrize("make,message", [
    (lambda p, t: os.symlink(t, p), "is a symbolic link"),
    (lambda p, t: os.symlink(t.parent / "nowhere", p), "is a symbolic link"),
    (lambda p, t: p.write_text("a file"), "exists and is not a folder"),
])
def test_out_that_is_a_link_or_a_file_is_a_one_line_error(stored, tmp_path, capsys, make, message):
    folder, (q, k, v, _) = stored
    out = tmp_path / "out"
    make(out, folder)
    for name, a in zip("qkv", (q, k, v)):
        np.save(tmp_path / f"{name}.npy", a)
    argv = ["reference", *[x for n in "qkv" for x in (f"--{n}", str(tmp_path / f"{n}.npy"))], "--out", str(out),
            "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert load_reference(folder).complete  # the folder a link pointed at is untouched


def test_a_full_disk_is_a_one_line_error_and_the_folder_resumes(tmp_path, monkeypatch, capsys):
    q, k, v, dout = _inputs()
    for name, a in zip(("q", "k", "v", "dout"), (q, k, v, dout)):
        np.save(tmp_path / f"{name}.npy", a)
    argv = ["reference", *[x for n in "qkv" for x in (f"--{n}", str(tmp_path / f"{n}.npy"))],
            "--backward", str(tmp_path / "dout.npy"), "--out", str(tmp_path / "r"), "--shard", "128"]

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dist.os, "posix_fallocate", full)  # no room for the outputs
    assert main(argv) == 2
    assert "No space left on device" in capsys.readouterr().err
    monkeypatch.undo()
    calls = []
    real_save = dist._save

    def full_later(file, arr):  # room for the outputs, none for the second shard's partial sums
        calls.append(file)
        if len(calls) == 3:
            full()
        real_save(file, arr)

    monkeypatch.setattr(dist, "_save", full_later)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "resumes" in err and "Traceback" not in err
    assert json.loads((tmp_path / "r" / "meta.json").read_text())["done"] == [0]
    monkeypatch.undo()
    assert main(argv) == 0
    ref = load_reference(tmp_path / "r", q=q, k=k, v=v, dout=dout)
    assert np.array_equal(ref["out"], reference(q, k, v, out=tmp_path / "clean", shard=128, progress=False)["out"])


# ----------------------------------------------------------------------------- inputs refused, not cast
@pytest.mark.parametrize("kw,error,message", [
    (dict(mask=np.full((300, 260), 0.5)), TypeError, "^mask: expected a boolean array"),
    (dict(key_lengths=np.array(3.7)), TypeError, "^key_lengths: expected integers"),
    (dict(key_lengths=np.array(True)), TypeError, "^key_lengths: expected integers"),
    (dict(key_lengths=np.array(261)), ValueError, r"^key_lengths: every entry must lie in \[0, S\]"),
    (dict(key_lengths=np.array(2**62)), ValueError, r"^key_lengths: every entry must lie in \[0, S\]"),
])
def test_masks_and_key_lengths_are_refused_not_cast(tmp_path, kw, error, message):
    q, k, v, _ = _inputs()
    with pytest.raises(error, match=message):
        reference(q, k, v, out=tmp_path / "r", progress=False, **kw)
    assert not (tmp_path / "r").exists()


def test_a_npy_header_that_lies_about_its_size_is_refused(tmp_path):
    header = {"descr": "<f8", "fortran_order": False, "shape": (2**30, 2**30)}
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with pytest.raises(ValueError, match=r"^q: .* declares \(1073741824, 1073741824\) float64 .* holds 64 bytes"):
        input_array(tmp_path / "huge.npy", "q")
    np.save(tmp_path / "obj.npy", np.array([None]), allow_pickle=True)
    with pytest.raises(ValueError, match="^k: .* holds object values"):
        input_array(tmp_path / "obj.npy", "k")
