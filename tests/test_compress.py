"""Lossless compression: exact round trips for a byte LM and a BLT of every patcher kind, sizes
near the model's own bits, determinism across processes and thread settings, and the CLI's
refusals (another model, damaged, truncated or foreign files: exit 2, no output file)."""
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from blt.cli import main
from blt.errors import UserError
from blt.inference.compress import blt_feeds, byte_lm_feeds, compress, decompress
from blt.inference.container import HEADER_SIZE, ContainerError, unpack
from blt.models.blt import BLTConfig, ByteLatentTransformer
from blt.models.byte_lm import ByteLM, ByteLMConfig
from blt.models.transformer import TransformerConfig
from blt.patching.patchers import PatcherConfig, build_patcher
from blt.runs.config import RunConfig
from blt.runs.kinds import KINDS

REPO = Path(__file__).resolve().parents[1]
FINGERPRINT = hashlib.sha256(b"test model").digest()
TEXT = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_bytes()
BPE_TOKENS = [bytes([b]) for b in range(256)] + [b"th", b"the", b"in", b"ing", b" the", b"re", b"er", b"de", b"def"]
PATCHER_KINDS = ["static", "space", "entropy", "relative", "entropy_relative", "bpe", "byte", "equal_info"]


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n).astype(np.uint8).tobytes()


INPUTS = {
    "empty": b"",
    "one_byte": b"\x00",
    "random": random_bytes(150),
    "not_utf8": b"\xff\xfe\xc3(\x80\x80abc\xed\xa0\x80\xf5\x00" * 6,
    "text": TEXT[:200],
}


def byte_lm_config() -> ByteLMConfig:
    # a context of 24 and a window of 12: blocks of 100+ bytes slide well past both
    return ByteLMConfig(dim=32, n_layers=2, n_heads=2, context=24, window=12)


def byte_lm() -> ByteLM:
    torch.manual_seed(0)
    model = ByteLM(byte_lm_config())
    model.init_weights()
    return model.eval()


def blt_config() -> BLTConfig:
    return BLTConfig(
        context=24,
        latent_context=8,
        encoder=TransformerConfig(dim=32, n_layers=1, n_heads=2, window=8),
        latent=TransformerConfig(dim=32, n_layers=1, n_heads=2),
        decoder=TransformerConfig(dim=32, n_layers=1, n_heads=2, window=8),
        hash_ngram_sizes=[3, 4],
        hash_buckets=61,
    )


def patcher_config(kind: str) -> PatcherConfig:
    """Thresholds that cut patches of a few bytes under the untrained entropy model."""
    return PatcherConfig(kind=kind, theta=5.4, theta_r=0.0, budget=12.0, patch_size=3, max_patch_length=6)


def blt_model(kind: str) -> ByteLatentTransformer:
    torch.manual_seed(0)
    model = ByteLatentTransformer(blt_config())
    cfg = patcher_config(kind)
    model.set_patching(build_patcher(cfg, BPE_TOKENS), ByteLM(byte_lm_config()) if cfg.needs_entropy else None)
    model.init_weights()
    return model.eval()


def round_trip(feeds, data: bytes, **layout) -> bytes:
    blob = compress(feeds, data, FINGERPRINT, progress=False, **layout)
    assert decompress(feeds, blob, FINGERPRINT, progress=False) == data
    return blob


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", list(INPUTS))
def test_byte_lm_round_trips(name):
    round_trip(byte_lm_feeds(byte_lm()), INPUTS[name])


def test_multi_block_batches_round_trip():
    """5 blocks (the last one short) in batches of 2: three model states per direction."""
    data = TEXT[:230] + random_bytes(40)
    blob = round_trip(byte_lm_feeds(byte_lm()), data, block_size=60, batch_blocks=2)
    header, blocks = unpack(blob)
    assert (header.block_size, header.batch_blocks, len(blocks)) == (60, 2, 5)


@pytest.mark.parametrize("kind", PATCHER_KINDS)
def test_blt_round_trips_with_every_patcher(kind):
    """Text, random and invalid UTF-8 bytes in three blocks of two batches; empty and one byte."""
    feeds = blt_feeds(blt_model(kind))
    data = TEXT[:70] + random_bytes(30) + INPUTS["not_utf8"][:30]
    blob = round_trip(feeds, data, block_size=50, batch_blocks=2)
    assert len(unpack(blob)[1]) == 3
    round_trip(feeds, b"")
    round_trip(feeds, b"\xc3")


def test_blocks_decode_independently_of_their_neighbours():
    """A block's coded bytes depend on its own bytes only: two files sharing their first block
    (and its batch) share its coded bytes."""
    feeds = byte_lm_feeds(byte_lm())
    a = compress(feeds, TEXT[:120] + b"one ending", FINGERPRINT, block_size=60, batch_blocks=1, progress=False)
    b = compress(feeds, TEXT[:120] + random_bytes(50), FINGERPRINT, block_size=60, batch_blocks=1, progress=False)
    assert unpack(a)[1][:2] == unpack(b)[1][:2] and unpack(a)[1][2] != unpack(b)[1][2]


# ---------------------------------------------------------------- size


def test_size_is_the_models_bits_plus_the_header():
    """One block: the payload is the model's own cost (the scorer's nats, one forward over the
    document) within a byte, less the mass the model puts on BOS/EOS/PAD, which never occur."""
    model = byte_lm()
    data = TEXT[:400]
    blob = round_trip(byte_lm_feeds(model), data)
    payload_bits = 8 * (len(blob) - HEADER_SIZE - 4)
    model_bits = float(KINDS["byte"].scores(model, [np.frombuffer(data, np.uint8)], 1)[0].sum()) / np.log(2)
    assert model_bits - 0.05 * len(data) < payload_bits <= model_bits + 8


# ---------------------------------------------------------------- refusals in the library


def test_another_model_is_refused_before_decoding():
    blob = compress(byte_lm_feeds(byte_lm()), TEXT[:50], FINGERPRINT, progress=False)
    with pytest.raises(ContainerError, match="another model"):
        decompress(byte_lm_feeds(byte_lm()), blob, hashlib.sha256(b"other").digest(), progress=False)


def test_other_floats_fail_the_checksum():
    """Same fingerprint, slightly different weights (what another machine's rounding would
    do): the bytes come out wrong, and the checksum says so instead of returning them."""
    blob = compress(byte_lm_feeds(byte_lm()), TEXT[:300], FINGERPRINT, progress=False)
    other = byte_lm()
    with torch.no_grad():
        other.head.weight.mul_(1.05)
    with pytest.raises(ContainerError, match="checksum|does not decode"):
        decompress(byte_lm_feeds(other), blob, FINGERPRINT, progress=False)


def test_bpe_token_runs_cannot_compress():
    with pytest.raises(UserError, match="byte-level model"):
        KINDS["bpe"].feeds(None)


# ---------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def runs(make_run):
    """A byte LM run, a second one (other weights), and an equal-information BLT run."""
    byte_cfg = RunConfig(model_kind="byte", model=byte_lm_config())
    blt_cfg = RunConfig(model_kind="blt", blt=blt_config(), patching=patcher_config("equal_info"),
                        entropy_model=byte_lm_config())
    return {"byte": make_run(byte_cfg), "other": make_run(byte_cfg, seed=1), "blt": make_run(blt_cfg)}


def cli(*args, threads: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-m", "blt.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, timeout=300)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_thread_setting_does_not_change_the_file():
    """The coder pins torch to one thread: with two threads the tiny model's output layer rounds
    otherwise (measured), and a file must not depend on the caller's setting."""
    feeds = byte_lm_feeds(byte_lm())
    one = compress(feeds, TEXT[:300], FINGERPRINT, progress=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert compress(feeds, TEXT[:300], FINGERPRINT, progress=False) == one
        assert torch.get_num_threads() == 2  # the caller's setting is given back
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["byte", "blt"])
def test_cli_round_trip_in_separate_processes(runs, tmp_path, kind):
    """Compressed in one process with two threads, decompressed in another with one."""
    source = tmp_path / "in.bin"
    source.write_bytes(TEXT[:150] + random_bytes(40))
    packed, unpacked = tmp_path / "in.bltz", tmp_path / "out.bin"
    proc = cli("compress", runs[kind], source, packed, "--block-size", 64, "--batch-blocks", 2, threads=2)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b'"output_bytes"' in proc.stdout
    proc = cli("decompress", runs[kind], packed, unpacked, threads=1)
    assert proc.returncode == 0, proc.stderr.decode()
    assert unpacked.read_bytes() == source.read_bytes() and leftovers(tmp_path) == []


def damaged_files(good: bytes) -> dict[str, bytes]:
    flipped = bytearray(good)
    flipped[-3] ^= 0x10  # a coded byte: decodes to other bytes, caught by the checksum
    return {
        "corrupted": bytes(flipped),
        "truncated": good[: len(good) - 5],
        "header_only": good[:20],
        "foreign": b"PK\x03\x04 a zip file, not ours" * 5,
        "text": TEXT[:300],
    }


@pytest.fixture(scope="module")
def packed(runs, tmp_path_factory):
    """A file compressed with the byte run (in this process)."""
    tmp = tmp_path_factory.mktemp("packed")
    (tmp / "in.txt").write_bytes(TEXT[:300])
    assert main(["compress", str(runs["byte"]), str(tmp / "in.txt"), str(tmp / "in.bltz"), "--no-progress"]) == 0
    return tmp / "in.bltz"


@pytest.mark.parametrize("case", ["corrupted", "truncated", "header_only", "foreign", "text", "other_model"])
def test_bad_files_exit_2_and_leave_no_output(runs, packed, tmp_path, capsys, case):
    source = tmp_path / "bad.bltz"
    run = runs["byte"]
    if case == "other_model":
        source.write_bytes(packed.read_bytes())
        run = runs["other"]
    else:
        source.write_bytes(damaged_files(packed.read_bytes())[case])
    capsys.readouterr()
    out = tmp_path / "out.txt"
    assert main(["decompress", str(run), str(source), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blt decompress: error: ") and err.count("\n") == 1, err
    expected = {"corrupted": "checksum|does not decode", "truncated": "truncated", "header_only": "truncated",
                "foreign": "not a blt compressed file", "text": "not a blt compressed file",
                "other_model": "another model"}[case]
    assert re.search(expected, err), err
    assert not out.exists() and leftovers(tmp_path) == []


def test_bad_arguments(runs, packed, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_bytes(TEXT[:100])
    before = source.read_bytes()
    for args in (
        ["compress", runs["byte"], source, source],  # the output would replace the input
        ["compress", runs["byte"], tmp_path / "missing.txt", tmp_path / "x.bltz"],
        ["compress", runs["byte"], source, tmp_path / "no_dir" / "x.bltz"],
        ["compress", runs["byte"], source, tmp_path / "x.bltz", "--block-size", "0"],
        ["compress", tmp_path, source, tmp_path / "x.bltz"],  # not a run directory
        ["decompress", runs["byte"], packed, packed],
    ):
        capsys.readouterr()
        assert main([*map(str, args), "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert source.read_bytes() == before and not (tmp_path / "x.bltz").exists()
