"""Issue 15: `python -m objx` given a bad argument or file ends in one line on stderr
(`objx: error: ...`) and a non-zero exit, never a traceback or a silent default."""

import subprocess
import sys

import numpy as np
import pytest
import torch


def objx_cli(*args, cwd=None):
    # The environment (PYTHONPATH included) is the test run's, so the CLI is the objx under test.
    return subprocess.run([sys.executable, "-m", "objx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def assert_one_line_error(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, f"exit 0 for a bad input; stdout: {result.stdout!r}"
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("objx: error: "), f"stderr: {result.stderr!r}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "NaN" not in result.stdout and "nan" not in result.stdout, result.stdout


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    emb = lambda b: torch.randn(b, 4, generator=g)  # noqa: E731
    paths = {name: tmp_path / name for name in ("text.pt", "garbage.pt", "garbage.npy", "dict.pt", "list.pt",
                                                "no_rejected.pt", "empty.pt", "tensor.pt", "nan.pt", "strings.npy")}
    paths["text.pt"].write_text("prompt,chosen,rejected\n1,2,3\n")
    paths["garbage.pt"].write_bytes(bytes(range(256)) * 3)
    paths["garbage.npy"].write_bytes(b"\x93NUMPY" + bytes(range(200)))
    torch.save({"probs": torch.rand(10, generator=g)}, paths["dict.pt"])
    torch.save([emb(3), emb(3), emb(3)], paths["list.pt"])
    torch.save({"prompt": emb(3), "chosen": emb(3)}, paths["no_rejected.pt"])
    torch.save({"prompt": emb(0), "chosen": emb(0), "rejected": emb(0)}, paths["empty.pt"])
    torch.save(torch.rand(10, generator=g), paths["tensor.pt"])
    torch.save({"prompt": emb(3), "chosen": emb(3).fill_(float("nan")), "rejected": emb(3)}, paths["nan.pt"])
    np.save(paths["strings.npy"], np.array(["a", "b"]))
    return paths


def test_select_capability_bad_files(files, tmp_path):
    assert_one_line_error(objx_cli("select", "capability", "--probs", tmp_path / "missing.pt"), "--probs",
                          "no such file")
    for name in ("text.pt", "garbage.pt", "garbage.npy", "strings.npy"):
        assert_one_line_error(objx_cli("select", "capability", "--probs", files[name]), "--probs", "cannot read",
                              name)
    assert_one_line_error(objx_cli("select", "capability", "--probs", files["dict.pt"]), "--probs",
                          "to be a tensor, got dict")


def test_select_dpo_bad_files(files, tmp_path):
    run = lambda path: objx_cli("select", "dpo", "--embeddings", path)  # noqa: E731
    assert_one_line_error(run(tmp_path / "missing.pt"), "--embeddings", "no such file")
    assert_one_line_error(run(files["text.pt"]), "--embeddings", "cannot read")
    assert_one_line_error(run(files["list.pt"]), "expected a dict", "got list")
    assert_one_line_error(run(files["tensor.pt"]), "expected a dict", "got Tensor")
    assert_one_line_error(run(files["no_rejected.pt"]), "no 'rejected'", "keys: 'prompt', 'chosen'")
    # empty embeddings used to print a table of NaN and exit 0
    assert_one_line_error(run(files["empty.pt"]), "select_kernel", "at least one pair")
    assert_one_line_error(run(files["nan.pt"]), "chosen_emb has NaN or inf")


# Each case names a tiny shape, so that a regression runs (and fails) in seconds, not the default bench.
@pytest.mark.parametrize("args, fragments", [
    (["--shape", "10xfoo"], ["argument --shape", "NxV", "'10xfoo'"]),
    (["--shape", "0x100"], ["argument --shape", "'0x100'"]),
    (["--shape", "8x0"], ["argument --shape", "'8x0'"]),
    (["--linear-shape", "8x8"], ["argument --linear-shape", "NxDxV"]),
    (["--dpo-shape", "2x-3x8"], ["argument --dpo-shape", "BxTxV"]),
    (["--shape", "8x8", "--repeats", "-1"], ["argument --repeats", "at least 1, got -1"]),
    (["--shape", "8x8", "--repeats", "0"], ["argument --repeats", "at least 1, got 0"]),  # was: the default
    (["--shape", "8x8", "--device", "tpu"], ["argument --device", "cpu, cuda or cuda:N"]),
    (["--shape", "8x8", "--objective", "focal"], ["argument --objective", "cannot parse objective 'focal'"]),
    (["--distill-shape", "8x8", "--method", "kl"], ["argument --method", "invalid choice"]),
    (["--divergence-shape", "8x8", "--kind", "wasserstein"], ["argument --kind", "invalid choice"]),
    (["--shape", "8x8", "--out", "no/such/folder/out.json"], ["--out", "no folder"]),
])
def test_bench_bad_arguments(args, fragments):
    assert_one_line_error(objx_cli("bench", *args), *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a machine without CUDA")
def test_bench_cuda_without_cuda():
    assert_one_line_error(objx_cli("bench", "--device", "cuda", "--shape", "8x8"), "argument --device",
                          "no CUDA device")


def test_demo_seeds_and_unknown_commands():
    assert_one_line_error(objx_cli("demo", "--seeds", "0"), "argument --seeds", "at least 1")
    assert_one_line_error(objx_cli("frobnicate"), "invalid choice")


def test_good_inputs_still_work(files, tmp_path):
    out = tmp_path / "bench.json"
    result = objx_cli("bench", "--device", "cpu", "--shape", "16x64", "--objective", "nll", "--repeats", "1",
                      "--no-compile", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "16x64" in result.stdout and "median of 1 runs" in result.stdout and out.exists()
    good = tmp_path / "good.pt"
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    torch.save({k: torch.randn(5, 4, generator=g) for k in ("prompt", "chosen", "rejected")}, good)
    result = objx_cli("select", "dpo", "--embeddings", good)
    assert result.returncode == 0 and "<- best" in result.stdout, result.stderr
    probs = tmp_path / "probs.npy"
    np.save(probs, np.full(50, 0.1))
    result = objx_cli("select", "capability", "--probs", probs)
    assert result.returncode == 0 and "weak" in result.stdout, result.stderr
