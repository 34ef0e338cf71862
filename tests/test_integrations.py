"""objx.integrations: transformers (Trainer loss, fused causal-LM forward) and TRL-shaped losses."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import objx
from objx.integrations import trl as objx_trl

pytestmark = pytest.mark.cpu_only


def test_objx_imports_without_transformers_or_trl():
    code = ("import sys; sys.modules['transformers'] = None; sys.modules['trl'] = None; "
            "import objx, objx.integrations.transformers, objx.integrations.trl; print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr


# ---- TRL-shaped losses -------------------------------------------------------------------------

def _generalized_jsd(s, t, beta, temperature):
    """Agarwal et al. (2024) eq. 1 per position: beta KL(t || m) + (1 - beta) KL(s || m), m = beta t + (1 - beta) s,
    both softmaxes at the same temperature; beta = 0 / 1 are the KL limits KL(t || s) / KL(s || t)."""
    ls, lt = torch.log_softmax(s / temperature, -1), torch.log_softmax(t / temperature, -1)
    kl = lambda la, lb: (la.exp() * (la - lb)).sum(-1)
    if beta == 0:
        return kl(lt, ls)
    if beta == 1:
        return kl(ls, lt)
    lm = torch.logsumexp(torch.stack([ls + torch.log1p(torch.tensor(-beta, dtype=s.dtype)),
                                      lt + torch.log(torch.tensor(beta, dtype=s.dtype))]), 0)
    return beta * kl(lt, lm) + (1 - beta) * kl(ls, lm)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
@pytest.mark.parametrize("with_labels", [True, False])
def test_generalized_jsd_loss_matches_the_gkd_definition(beta, reduction, with_labels):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    s = (torch.randn(3, 5, 17, dtype=torch.float64, generator=g) * 2).requires_grad_(True)
    t = torch.randn(3, 5, 17, dtype=torch.float64, generator=g) * 2
    labels = torch.randint(0, 17, (3, 5), generator=g)
    labels[0, :2] = -100
    labels[2, 4] = -100
    got = objx_trl.generalized_jsd_loss(s, t, labels if with_labels else None, beta=beta, temperature=1.7,
                                        reduction=reduction)
    per = _generalized_jsd(s, t, beta, 1.7)
    mask = labels != -100 if with_labels else torch.ones_like(labels, dtype=torch.bool)
    per = torch.where(mask, per, torch.zeros_like(per))
    expected = {"batchmean": per.sum() / (mask.sum() if with_labels else 3), "sum": per.sum(),
                "mean": per.sum() / (mask.sum() * 17), "none": per}[reduction]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    w = torch.rand(expected.shape, dtype=torch.float64, generator=g)
    (g_got,) = torch.autograd.grad((got * w).sum(), s)
    (g_exp,) = torch.autograd.grad((expected * w).sum(), s)
    torch.testing.assert_close(g_got, g_exp, rtol=1e-10, atol=1e-12)


def test_generalized_jsd_loss_equals_trls_own(monkeypatch):
    """Against the installed TRL's GKDTrainer.generalized_jsd_loss (CI installs trl)."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    s = (torch.randn(3, 5, 50, dtype=torch.float64, generator=g) * 2).requires_grad_(True)
    t = torch.randn(3, 5, 50, dtype=torch.float64, generator=g) * 2
    labels = torch.randint(0, 50, (3, 5), generator=g)
    labels[0, :2] = -100
    for beta in (0.0, 0.3, 1.0):
        for reduction in ("batchmean", "sum", "mean"):
            for lab in (labels, None):
                theirs = gkd.GKDTrainer.generalized_jsd_loss(s, t, lab, beta=beta, temperature=1.5, reduction=reduction)
                ours = objx_trl.generalized_jsd_loss(s, t, lab, beta=beta, temperature=1.5, reduction=reduction)
                torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-14)
                g_theirs, = torch.autograd.grad(theirs, s)
                g_ours, = torch.autograd.grad(ours, s)
                torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-14)
    items = torch.tensor(7)
    torch.testing.assert_close(objx_trl.generalized_jsd_loss(s, t, labels, beta=0.3, num_items_in_batch=items),
                               gkd.GKDTrainer.generalized_jsd_loss(s, t, labels, beta=0.3, num_items_in_batch=items))


def test_generalized_jsd_loss_num_items_in_batch_and_bad_reduction():
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    total = objx_trl.generalized_jsd_loss(s, t, reduction="sum")
    torch.testing.assert_close(objx_trl.generalized_jsd_loss(s, t, num_items_in_batch=torch.tensor(4)), total / 4)
    with pytest.raises(ValueError, match="reduction"):
        objx_trl.generalized_jsd_loss(s, t, reduction="avg")


def test_dpo_kernels_loss_per_pair_and_rewards():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    pc, pr, rc, rr = (torch.randn(6, dtype=torch.float64, generator=g) * 3 for _ in range(4))
    losses, chosen, rejected = objx_trl.dpo_kernels_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=0.1)
    z = 0.2 * ((pc - rc) - (pr - rr))
    torch.testing.assert_close(losses, -0.9 * F.logsigmoid(z) - 0.1 * F.logsigmoid(-z), rtol=1e-12, atol=0)
    torch.testing.assert_close(chosen, 0.2 * (pc - rc)) and torch.testing.assert_close(rejected, 0.2 * (pr - rr))
    mean, _ = objx.dpo_kernel_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=0.1)
    torch.testing.assert_close(losses.mean(), mean, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="per-token batch terms"):
        objx.dpo_kernel_loss(pc, pr, rc, rr, reduction="none", nll=pc, nll_coef=1.0)


# ---- transformers --------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
from objx.integrations import transformers as objx_hf  # noqa: E402


def _tiny_llama(seed=0, dtype=torch.float64):
    config = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(dtype)


def _batch(seed, rows=3, length=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 101, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt
    labels[1, -3:] = -100  # padding
    return ids, labels


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fused_forward_equals_the_models_own_loss_and_gradients():
    plain, fused = _tiny_llama(), objx_hf.apply_objx_loss(_tiny_llama(), "nll")
    ids, labels = _batch(torch.seed() % 2**31)
    ref = plain(input_ids=ids, labels=labels)
    out = fused(input_ids=ids, labels=labels)
    assert out.logits is None  # never built
    # transformers computes its loss in float32 whatever the model's dtype: compare at float32 tolerance, and
    # against the float64 reference on the same logits at float64 tolerance.
    assert ref.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss.double(), rtol=1e-5, atol=0)
    logits = plain(input_ids=ids).logits
    torch.testing.assert_close(out.loss, objx.reference.prob_loss(logits[:, :-1], labels[:, 1:]), rtol=1e-10, atol=0)
    ref.loss.backward()
    out.loss.backward()
    g_ref, g_out = _grads(plain), _grads(fused)
    assert g_ref.keys() == g_out.keys() and len(g_ref) > 10
    for name in g_ref:
        err = (g_out[name] - g_ref[name]).abs().max() / g_ref[name].abs().max()
        assert err < 1e-4, f"{name}: {err:.2e}"
    # Without labels the original forward runs and returns logits.
    assert fused(input_ids=ids).logits.shape == (3, 12, 101)


@pytest.mark.parametrize("objective, kwargs", [("-p", {}), ("-p^10", {}), ("nll", {"min_prob": 0.01})])
def test_fused_forward_and_compute_loss_func_give_the_objective(objective, kwargs):
    model = objx_hf.apply_objx_loss(_tiny_llama(), objective, **kwargs)
    ids, labels = _batch(torch.seed() % 2**31)
    fused = model(input_ids=ids, labels=labels).loss
    logits = model(input_ids=ids).logits
    # The mean over the tokens the objective counts (those passing its thresholds: every label token
    # without one), objx.prob_loss's "mean".
    expected = objx.reference.prob_loss(logits[:, :-1], labels[:, 1:], objective, **kwargs)
    torch.testing.assert_close(fused, expected, rtol=1e-10, atol=0)
    func = objx_hf.compute_loss_func(objective, **kwargs)
    torch.testing.assert_close(func({"logits": logits}, labels), expected, rtol=1e-10, atol=0)
    items = torch.tensor(40)
    torch.testing.assert_close(model(input_ids=ids, labels=labels, num_items_in_batch=items).loss,
                               func({"logits": logits}, labels, num_items_in_batch=items), rtol=1e-10, atol=0)


def _thresholded_case(seed):
    """(model, ids, labels, logits) where -log p · 1[p >= 0.2] leaves out a good part of the label tokens:
    a sharpened head, and labels that are the model's own top token at about half of the positions."""
    model = _tiny_llama()
    model.lm_head.weight.data *= 60
    ids, labels = _batch(seed, rows=4)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    g = torch.Generator().manual_seed(seed)
    top = torch.rand(labels[:, 1:].shape, generator=g) < 0.5
    labels[:, 1:] = torch.where(top & (labels[:, 1:] != -100), logits[:, :-1].argmax(-1), labels[:, 1:])
    return model, ids, labels, logits


@pytest.mark.parametrize("fused", [False, True])
def test_thresholded_objective_is_the_mean_over_passing_tokens(fused):
    """The authors' normalisation (SPEC §1: "mean" over counted rows): the sum over the tokens with p >= 0.2
    divided by their number, not by every label token (that was the loss times the passing fraction)."""
    model, ids, labels, logits = _thresholded_case(torch.seed() % 2**31)
    shifted_logits, shifted = logits[:, :-1], labels[:, 1:]
    p = torch.softmax(shifted_logits.double(), -1).gather(-1, shifted.clamp(min=0)[..., None])[..., 0]
    valid = shifted != -100
    passing = (valid & (p >= 0.2)).sum()
    assert 0 < passing < valid.sum(), "the threshold must leave some label tokens out for this test to mean anything"
    total = objx.reference.prob_loss(shifted_logits, shifted, "nll", min_prob=0.2, reduction="sum")
    expected = total / passing
    if fused:
        model = objx_hf.apply_objx_loss(model, "nll", min_prob=0.2)
        loss = lambda **kw: model(input_ids=ids, labels=labels, **kw).loss  # noqa: E731
    else:
        func = objx_hf.compute_loss_func("nll", min_prob=0.2)
        loss = lambda **kw: func({"logits": logits}, labels, **kw)  # noqa: E731
    torch.testing.assert_close(loss(), expected, rtol=1e-10, atol=0)
    # Without gradient accumulation num_items_in_batch is this batch's label tokens: the same loss.
    torch.testing.assert_close(loss(num_items_in_batch=valid.sum()), expected, rtol=1e-10, atol=0)
    # The label-token denominator stays available.
    labels_func = objx_hf.compute_loss_func("nll", min_prob=0.2, normalize="labels")
    torch.testing.assert_close(labels_func({"logits": logits}, labels), total / valid.sum(), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="normalize must be one of"):
        objx_hf.compute_loss_func("nll", normalize="tokens")


def test_thresholded_objective_under_gradient_accumulation():
    """Two micro-batches with num_items_in_batch = every label token of both: each micro-batch's passing mean,
    weighted by its share of the label tokens (the whole batch's passing count is unknown until both ran)."""
    _model, _ids, labels, logits = _thresholded_case(torch.seed() % 2**31)
    func = objx_hf.compute_loss_func("nll", min_prob=0.2)
    items = (labels[:, 1:] != -100).sum()
    accumulated = sum(func({"logits": logits[k:k + 2]}, labels[k:k + 2], num_items_in_batch=items) for k in (0, 2))
    expected = 0
    for k in (0, 2):
        z, y = logits[k:k + 2, :-1], labels[k:k + 2, 1:]
        share = (y != -100).sum().double() / items
        expected = expected + share * objx.reference.prob_loss(z, y, "nll", min_prob=0.2)
    torch.testing.assert_close(accumulated, expected.to(accumulated.dtype), rtol=1e-10, atol=0)
    # Without thresholds this is transformers' exact convention: the sum over both over every label token.
    plain = objx_hf.compute_loss_func("nll")
    accumulated = sum(plain({"logits": logits[k:k + 2]}, labels[k:k + 2], num_items_in_batch=items) for k in (0, 2))
    torch.testing.assert_close(accumulated, objx.reference.prob_loss(logits[:, :-1], labels[:, 1:], reduction="sum")
                               / items, rtol=1e-10, atol=0)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, seed, rows=16):
        self.ids, self.labels = _batch(seed, rows=rows)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def test_trainer_steps_match_between_the_fused_forward_and_compute_loss_func(tmp_path):
    pytest.importorskip("accelerate")
    data = _Rows(torch.seed() % 2**31)
    histories, params = [], []
    for fused in (True, False):
        model = _tiny_llama(seed=1, dtype=torch.float32)
        if fused:
            model = objx_hf.apply_objx_loss(model, "-p")
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / str(fused)), max_steps=4, per_device_train_batch_size=4, learning_rate=3e-3,
            logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0, dataloader_num_workers=0,
            gradient_accumulation_steps=2, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                       compute_loss_func=None if fused else objx_hf.compute_loss_func("-p"))
        trainer.train()
        histories.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert len(histories[0]) == 4 and histories[0][0] > 0
    torch.testing.assert_close(torch.tensor(histories[0]), torch.tensor(histories[1]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(params[0], params[1], rtol=1e-4, atol=1e-5)
    assert histories[0][-1] != histories[0][0]  # it trained


def _fsdp_rank(rank, world, port, seed, out):
    import fsdp_worker

    fsdp_worker.main(rank, world, port, seed, out)


def test_fsdp2_sharded_model_through_the_fused_forward(tmp_path):
    """FSDP2 (fully_shard, gloo on CPU): the LM head is a sharded DTensor outside the forward; the patched
    forward runs inside FSDP2's unshard, and the averaged gradients equal the single-process ones."""
    import random
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seed = random.randrange(2**31)
    mp.spawn(_fsdp_rank, args=(2, port, seed, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        head, loss_err, grad_err = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert head == "DTensor"
        assert float(loss_err) < 1e-10 and float(grad_err) < 1e-10, (seed, rank, loss_err, grad_err)
