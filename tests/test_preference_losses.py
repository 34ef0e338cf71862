"""The preference-loss family of objx.dpo_kernel_loss and DPOKernelLoss (SPEC §3.5) against TRL's own
code: the DPOTrainer loss types through DPOTrainer._compute_loss on a minimal trainer object whose
'model' returns given per-token log-probabilities, CPOTrainer.cpo_loss (cpo, simpo) and
ORPOTrainer.odds_ratio_loss (orpo); the reference-free types with the kernel and divergence terms;
the empty cases and the label_smoothing ranges."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import objx
from helpers import TOLERANCES, assert_close, make_logits
from objx import kernels

# TRL 1.16's DPOConfig.loss_type values, and those its DPOTrainer allows a non-default f-divergence with.
TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
F_DIVERGENCE_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
DTYPES = (torch.float64, torch.float32)
VOCAB = 64


@pytest.fixture(scope="module")
def trl():
    """TRL's trainer modules (TRL's loss code is the oracle here; importing it takes seconds)."""
    return SimpleNamespace(dpo=pytest.importorskip("trl.trainer.dpo_trainer"),
                           cpo=pytest.importorskip("trl.experimental.cpo.cpo_trainer"),
                           orpo=pytest.importorskip("trl.experimental.orpo.orpo_trainer"))


def _bare(cls, **fields):
    """An instance of a TRL trainer class with only the attributes its loss code reads."""
    obj = object.__new__(cls)
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    for name, value in dict(accelerator=accelerator, **fields).items():
        object.__setattr__(obj, name, value)
    return obj


def trl_dpo_loss(trl, token_logps, mask, ref_logps, *, loss_type, beta, label_smoothing=0.0, loss_weights=None,
                 f_divergence="reverse_kl", f_alpha=0.5, discopop_tau=0.05):
    """(loss, metrics) of TRL's DPOTrainer._compute_loss on per-token log-probs [2B, S] (chosen rows
    first, 0 outside the response), their response mask [2B, S] and reference sequence log-probs
    [2B] (TRL's precomputed-reference path)."""
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    trainer = _bare(trl.dpo.DPOTrainer, model=SimpleNamespace(training=True), aux_loss_enabled=False, ld_alpha=None,
                    precompute_ref_logps=True, f_divergence_type=f_divergence, f_alpha_divergence_coef=f_alpha,
                    loss_types=types, loss_weights=loss_weights or [1.0] * len(types), beta=beta,
                    label_smoothing=label_smoothing, use_weighting=False,
                    args=SimpleNamespace(discopop_tau=discopop_tau),
                    _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    rows, steps = token_logps.shape
    # TRL shifts its completion mask by one position: the prompt token in front is never counted.
    completion_mask = torch.cat([torch.zeros(rows, 1, dtype=torch.long), mask.long()], 1)
    zeros = torch.zeros(rows, steps)
    outputs = SimpleNamespace(log_probs=token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    inputs = dict(input_ids=torch.zeros(rows, steps + 1, dtype=torch.long), completion_mask=completion_mask,
                  attention_mask=torch.ones(rows, steps + 1, dtype=torch.long),
                  ref_chosen_logps=ref_logps[:rows // 2], ref_rejected_logps=ref_logps[rows // 2:])
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # exo_pair builds torch.tensor(label_smoothing): float64, not float32
    try:
        loss = trainer._compute_loss(lambda **_: outputs, inputs, False)
    finally:
        torch.set_default_dtype(default)
    logged = {k: v[0] for k, v in trainer._metrics["train"].items()}
    return loss, logged


def _token_logps(pairs, steps, dtype):
    """Per-token log-probabilities [2 * pairs, steps] of gold tokens under fresh random logits
    (make_logits: every probability range), 0 after each response's random length (>= 1), the
    response mask, and reference per-token log-probs near them (a policy not far from its reference)."""
    z, y = make_logits(2 * pairs * steps, VOCAB, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (2 * pairs,))
    mask = torch.arange(steps)[None] < lengths[:, None]
    tok = torch.log_softmax(z, -1).gather(1, y[:, None]).view(2 * pairs, steps) * mask
    ref = (tok + 0.3 * torch.randn(tok.shape, dtype=torch.float64)) * mask
    return tok.to(dtype).double(), mask, ref.to(dtype).double()  # values representable in dtype


def _objx_inputs(tok, mask, device, dtype):
    """A leaf copy of the per-token log-probs on device and the dpo_kernel_loss arguments from it."""
    leaf = tok.detach().to(device=device, dtype=dtype).clone().requires_grad_()
    pairs = tok.shape[0] // 2
    m = mask.to(device)
    lp = leaf.sum(1)
    return leaf, dict(policy_chosen_logps=lp[:pairs], policy_rejected_logps=lp[pairs:],
                      chosen_lengths=m[:pairs].sum(1), rejected_lengths=m[pairs:].sum(1),
                      nll=-leaf[:pairs][m[:pairs]])


def _tolerances(*dtypes):
    return TOLERANCES[torch.float32] if torch.float32 in dtypes else TOLERANCES[torch.float64]


def _check_against_trl(trl, device, dtype, loss_type, *, pairs=6, steps=9, **options):
    f_divergence = options.get("f_divergence", "reverse_kl")
    # TRL's alpha-divergence clamp table has no float64 entry: its oracle runs in float32 there.
    trl_dtype = torch.float32 if f_divergence == "alpha_divergence" else torch.float64
    tok, mask, ref_tok = _token_logps(pairs, steps, dtype)
    ref = ref_tok.sum(1)
    expected_leaf = tok.to(trl_dtype).clone().requires_grad_()
    expected, logged = trl_dpo_loss(trl, expected_leaf, mask, ref.to(trl_dtype), loss_type=loss_type, **options)
    expected.backward()
    leaf, args = _objx_inputs(tok, mask, device, dtype)
    ref_d = ref.to(device=device, dtype=dtype)
    loss, metrics = objx.dpo_kernel_loss(ref_chosen_logps=ref_d[:pairs], ref_rejected_logps=ref_d[pairs:],
                                         loss_type=loss_type, **args, **options)
    loss.backward()
    loss_tol, grad_tol = _tolerances(dtype, trl_dtype)
    assert_close(loss, expected, loss_tol, f"{loss_type} loss")
    assert_close(leaf.grad, expected_leaf.grad, grad_tol, f"{loss_type} gradient")
    # The rewards are beta * (log pi - log rho), differences of sequence scores: error relative to those.
    scale = loss_tol * options["beta"] * ref.abs().max().item()
    assert metrics["chosen_rewards"].mean().item() == pytest.approx(logged["rewards/chosen"], rel=loss_tol, abs=scale)
    assert metrics["reward_margin"].item() == pytest.approx(logged["rewards/margins"], rel=loss_tol, abs=scale)
    assert metrics["reward_accuracy"].item() == pytest.approx(logged["rewards/accuracies"])


# Each type with a label_smoothing it reads (TRL 1.16's sigmoid reads none: objx's cDPO smoothing
# of it is tested against its formula in test_dpo_kernels.py).
SMOOTHING = {"robust": 0.2, "exo_pair": 1e-3, "aot": 0.1, "aot_unpaired": 0.1}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_trl_loss_types_match_trl(trl, device, dtype, loss_type):
    _check_against_trl(trl, device, dtype, loss_type, beta=0.1, label_smoothing=SMOOTHING.get(loss_type, 0.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("f_divergence,f_alpha", [("forward_kl", 0.5), ("js_divergence", 0.5),
                                                  ("alpha_divergence", 0.5), ("alpha_divergence", 1.5)])
@pytest.mark.parametrize("loss_type", F_DIVERGENCE_TYPES)
def test_f_divergence_loss_types_match_trl(trl, device, dtype, loss_type, f_divergence, f_alpha):
    _check_against_trl(trl, device, dtype, loss_type, beta=0.2, label_smoothing=SMOOTHING.get(loss_type, 0.0),
                       f_divergence=f_divergence, f_alpha=f_alpha)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weighted_loss_type_list_matches_trl(trl, device, dtype):
    """TRL's multi-loss form (the MPO example of its DPOConfig docs)."""
    _check_against_trl(trl, device, dtype, ["sigmoid", "bco_pair", "sft"], beta=0.1, loss_weights=[0.8, 0.2, 1.0])


def trl_reference_free_loss(trl, loss_type, token_logps, mask, *, beta, label_smoothing, simpo_gamma, nll_coef):
    """TRL's CPOTrainer (cpo = its 'sigmoid', simpo) or ORPOTrainer loss from per-token log-probs:
    cpo_loss / odds_ratio_loss are TRL's code; the sequence log-probs (summed, averaged for simpo and
    orpo as TRL's get_batch_logps does), the NLL (its CrossEntropyLoss over chosen tokens) and the
    totals (CPO: losses.mean() + cpo_alpha * nll; ORPO: nll - losses.mean()) are transcribed."""
    pairs = token_logps.shape[0] // 2
    seq = token_logps.sum(1)
    if loss_type in ("simpo", "orpo"):
        seq = seq / mask.sum(1)
    nll = -token_logps[:pairs][mask[:pairs]].mean()
    if loss_type == "orpo":
        trainer = _bare(trl.orpo.ORPOTrainer, beta=beta)
        losses, chosen, rejected, _, _ = trainer.odds_ratio_loss(seq[:pairs], seq[pairs:])
        return nll - losses.mean(), chosen, rejected
    trainer = _bare(trl.cpo.CPOTrainer, alpha=0.0, beta=beta, label_smoothing=label_smoothing,
                    simpo_gamma=simpo_gamma, loss_type="simpo" if loss_type == "simpo" else "sigmoid")
    losses, chosen, rejected = trainer.cpo_loss(seq[:pairs], seq[pairs:])
    return losses.mean() + nll_coef * nll, chosen, rejected


# TRL's odds_ratio_loss casts the log-probs to float32: its ORPO is a float32 oracle (objx's float64
# ORPO is checked against the transcribed formula in float64 below).
ORACLE_DTYPE = {"orpo": (torch.float32,)}
REFERENCE_FREE_OPTIONS = {"cpo": dict(beta=0.3, label_smoothing=0.1), "orpo": dict(beta=0.2),
                          "simpo": dict(beta=2.0, label_smoothing=0.1, simpo_gamma=0.7)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_type", ["cpo", "simpo", "orpo"])
def test_reference_free_types_match_trl(trl, device, dtype, loss_type):
    options = REFERENCE_FREE_OPTIONS[loss_type]
    nll_coef = 0.0 if loss_type == "simpo" else 1.0  # the default: TRL's cpo_alpha = 1, ORPO's NLL term
    tok, mask, _ = _token_logps(6, 9, dtype)
    expected_leaf = tok.clone().requires_grad_()
    expected, chosen, rejected = trl_reference_free_loss(
        trl, loss_type, expected_leaf, mask, beta=options["beta"], label_smoothing=options.get("label_smoothing", 0.0),
        simpo_gamma=options.get("simpo_gamma", 0.5), nll_coef=nll_coef)
    expected.backward()
    leaf, args = _objx_inputs(tok, mask, device, dtype)
    loss, metrics = objx.dpo_kernel_loss(loss_type=loss_type, **args, **options)  # no reference log-probs
    loss.backward()
    loss_tol, grad_tol = _tolerances(dtype, *ORACLE_DTYPE.get(loss_type, ()))
    assert_close(loss, expected, loss_tol, f"{loss_type} loss")
    assert_close(leaf.grad, expected_leaf.grad, grad_tol, f"{loss_type} gradient")
    assert_close(metrics["chosen_rewards"], chosen, loss_tol, f"{loss_type} chosen rewards")
    assert_close(metrics["rejected_rewards"], rejected, loss_tol, f"{loss_type} rejected rewards")


def _embeddings(pairs, dim, device, dtype):
    return [F.normalize(torch.randn(pairs, dim, dtype=torch.float64), dim=-1).to(device=device, dtype=dtype)
            .requires_grad_() for _ in range(3)]


def _log_odds(avg):
    return avg - torch.log(1 - torch.exp(avg))  # plain float64: the averages here are far from 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_type", ["cpo", "simpo", "orpo"])
def test_reference_free_types_with_kernel_and_divergence(device, dtype, loss_type):
    """The kernel term enters the reference-free margins, the divergence and NLL terms add on
    (SimPO's, CPO's and ORPO's paper formulas with the kernel term, transcribed)."""
    pairs, beta, eps, gamma, weight, coef = 5, 0.4, 0.05, 0.6, 0.3, 0.5
    tok, mask, _ = _token_logps(pairs, 8, dtype)
    divergence = torch.rand(23, dtype=torch.float64).to(dtype)
    kernel = kernels.RBFKernel(0.8)

    def total(tok_leaf, embs, div, pw_lengths):
        lp = tok_leaf.sum(1)
        lp_w, lp_l = lp[:pairs], lp[pairs:]
        n_w, n_l = pw_lengths
        kappa = weight * (kernel.log_k(embs[0], embs[1]) - kernel.log_k(embs[0], embs[2]))
        nll = -tok_leaf[:pairs][mask[:pairs].to(tok_leaf.device)].mean()
        if loss_type == "orpo":
            pref = -beta * F.logsigmoid(_log_odds(lp_w / n_w) - _log_odds(lp_l / n_l) + kappa)
            nll_coef = 1.0
        else:
            z = beta * (lp_w / n_w - lp_l / n_l) - gamma + kappa if loss_type == "simpo" else beta * (lp_w - lp_l) + kappa
            pref = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
            nll_coef = 1.0 if loss_type == "cpo" else 0.0
        return pref.mean() + coef * div.mean() + nll_coef * nll

    embs64 = [e.detach().double().cpu().requires_grad_() for e in _embeddings(pairs, 6, device, dtype)]
    tok64, div64 = tok.clone().requires_grad_(), divergence.double().requires_grad_()
    lengths = mask.sum(1).double()
    expected = total(tok64, embs64, div64, (lengths[:pairs], lengths[pairs:]))
    expected.backward()

    leaf, args = _objx_inputs(tok, mask, device, dtype)
    embs = [e.detach().to(device=device, dtype=dtype).requires_grad_() for e in embs64]
    div = divergence.to(device).requires_grad_()
    loss, _ = objx.dpo_kernel_loss(loss_type=loss_type, beta=beta, simpo_gamma=gamma,
                                   label_smoothing=0.0 if loss_type == "orpo" else eps, kernel=kernel,
                                   prompt_emb=embs[0], chosen_emb=embs[1], rejected_emb=embs[2], kernel_weight=weight,
                                   divergence=div, divergence_coef=coef, **args)
    loss.backward()
    loss_tol, grad_tol = _tolerances(dtype)
    assert_close(loss, expected, loss_tol, f"{loss_type} with kernel and divergence")
    assert_close(leaf.grad, tok64.grad, grad_tol, "log-prob gradient")
    for got, want in zip(embs, embs64):
        assert_close(got.grad, want.grad, grad_tol, "embedding gradient")
    assert_close(div.grad, div64.grad, grad_tol, "divergence gradient")


def test_orpo_log_odds_stable_near_probability_one(device):
    """log odds = a - log(1 - exp(a)) by expm1 near a = 0: finite values and gradients where the plain
    formula cancels to log(0), and no NaN gradient from the branch not taken."""
    a_w = torch.tensor([-1e-6, -1e-3, -0.5, -0.7, -3.0, -40.0], dtype=torch.float64, device=device)
    a_l = torch.full_like(a_w, -2.0)
    for dtype in DTYPES:
        pw = a_w.to(dtype).clone().requires_grad_()
        loss, _ = objx.dpo_kernel_loss(pw, a_l.to(dtype), loss_type="orpo", beta=0.1, nll_coef=0.0, reduction="none")
        wide = pw.detach().double()
        expected = -0.1 * F.logsigmoid((wide - a_l) - (torch.log(-torch.expm1(wide)) - torch.log(-torch.expm1(a_l))))
        assert_close(loss, expected, TOLERANCES[dtype][0], f"orpo near 0 in {dtype}")
        loss.sum().backward()
        assert torch.isfinite(pw.grad).all(), pw.grad
    # Probability 1 (a response with no counted token): infinite odds, capped at a = -1e-30.
    pw = torch.tensor([0.0, -1.0], dtype=torch.float64, device=device).requires_grad_()
    loss, _ = objx.dpo_kernel_loss(pw, torch.full_like(pw, -2.0), loss_type="orpo", beta=0.1, nll_coef=0.0,
                                   reduction="none")
    capped = torch.tensor(-1e-30, dtype=torch.float64)
    assert loss[0].item() == pytest.approx(-0.1 * F.logsigmoid(capped - math.log(1e-30) - _log_odds(torch.tensor(-2.0,
                                           dtype=torch.float64))).item(), rel=1e-12)
    loss.sum().backward()
    assert torch.isfinite(pw.grad).all() and pw.grad[0].item() == 0.0


# ---- DPOKernelLoss with the new types ------------------------------------------------------------

def _pair_logits(device, dtype, pairs=3, steps=7, vocab=VOCAB, prompt=2):
    """Fresh policy/reference logits [B, T, V] for chosen and rejected, labels with ignore_index on the
    prompt and on a random padding tail (every response keeps at least one token)."""
    logits = []
    for _ in range(4):
        z, _ = make_logits(pairs * steps, vocab, dtype=dtype, device=device)
        logits.append(z.view(pairs, steps, vocab))
    labels = []
    for _ in range(2):
        y = torch.randint(0, vocab, (pairs, steps))
        y[:, :prompt] = -100
        for b in range(pairs):
            y[b, torch.randint(prompt + 1, steps + 1, ()).item():] = -100
        labels.append(y.to(device))
    return logits, labels


def _token_logps_of(logits, labels):
    lp = torch.log_softmax(logits.double(), -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return lp * (labels != -100)


def _padded(logits, labels):
    """TRL's get_batch_logps shifts labels by one; pad so that the shift lands on objx's alignment."""
    pad = torch.zeros_like(logits[:, :1])
    return torch.cat([logits, pad], 1), torch.cat([torch.full_like(labels[:, :1], -100), labels], 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_type", ["cpo", "simpo", "orpo"])
def test_module_reference_free_types_match_trl(trl, device, dtype, loss_type):
    """DPOKernelLoss on logits without a reference against TRL's get_batch_logps and its CPO / ORPO
    loss code (the NLL and the totals transcribed as in trl_reference_free_loss)."""
    options = REFERENCE_FREE_OPTIONS[loss_type]
    (pw, pl, _, _), (yw, yl) = _pair_logits(device, dtype)
    x_w, x_l = (t.detach().double().cpu().requires_grad_() for t in (pw, pl))
    average = loss_type in ("simpo", "orpo")
    seq = [trl.orpo.ORPOTrainer.get_batch_logps(*_padded(x, y.cpu()), average_log_prob=average)
           for x, y in ((x_w, yw), (x_l, yl))]
    nll = F.cross_entropy(x_w.flatten(0, 1), yw.cpu().flatten(), ignore_index=-100)
    if loss_type == "orpo":
        losses, chosen, _, _, _ = _bare(trl.orpo.ORPOTrainer, beta=options["beta"]).odds_ratio_loss(*seq)
        expected = nll - losses.mean()
    else:
        trainer = _bare(trl.cpo.CPOTrainer, alpha=0.0, beta=options["beta"], label_smoothing=options["label_smoothing"],
                        simpo_gamma=options.get("simpo_gamma", 0.5), loss_type="simpo" if average else "sigmoid")
        losses, chosen, _ = trainer.cpo_loss(*seq)
        expected = losses.mean() + (1.0 if loss_type == "cpo" else 0.0) * nll
    expected.backward()
    w, l_ = pw.clone().requires_grad_(), pl.clone().requires_grad_()
    loss, metrics = objx.DPOKernelLoss(loss_type=loss_type, **options)(w, l_, None, None, yw, yl)
    loss.backward()
    loss_tol, grad_tol = _tolerances(dtype, *ORACLE_DTYPE.get(loss_type, ()))
    assert_close(loss, expected, loss_tol, f"module {loss_type}")
    assert_close(w.grad, x_w.grad, grad_tol, f"module {loss_type} chosen gradient")
    assert_close(l_.grad, x_l.grad, grad_tol, f"module {loss_type} rejected gradient")
    assert_close(metrics["chosen_rewards"], chosen, loss_tol, f"module {loss_type} rewards")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid_norm", "sft", "exo_pair"])
def test_module_trl_types_match_trl(trl, device, dtype, loss_type):
    """DPOKernelLoss passes response lengths: its ipo and sigmoid_norm are TRL's length-normalised ones."""
    (pw, pl, rw, rl), (yw, yl) = _pair_logits(device, dtype)
    x = torch.cat([pw, pl]).detach().double().cpu().requires_grad_()
    labels = torch.cat([yw, yl]).cpu()
    ref = _token_logps_of(torch.cat([rw, rl]).cpu(), labels).sum(1)
    smoothing = SMOOTHING.get(loss_type, 0.0)
    expected, _ = trl_dpo_loss(trl, _token_logps_of(x, labels), labels != -100, ref, loss_type=loss_type, beta=0.3,
                               label_smoothing=smoothing)
    expected.backward()
    w, l_ = pw.clone().requires_grad_(), pl.clone().requires_grad_()
    loss, _ = objx.DPOKernelLoss(loss_type=loss_type, beta=0.3, label_smoothing=smoothing)(w, l_, rw, rl, yw, yl)
    loss.backward()
    loss_tol, grad_tol = _tolerances(dtype)
    assert_close(loss, expected, loss_tol, f"module {loss_type}")
    grad_l = torch.zeros_like(l_) if l_.grad is None else l_.grad  # sft: the rejected responses get none
    assert_close(torch.cat([w.grad, grad_l]), x.grad, grad_tol, f"module {loss_type} gradient")


def _pool(h, m):
    return F.normalize((h * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1)


@pytest.mark.parametrize("loss_type", ["cpo", "simpo", "orpo"])
def test_module_reference_free_with_kernel_and_divergence(device, loss_type):
    """The reference logits serve only the divergence term here; the kernel embeddings are pooled from
    the hidden states (SPEC §3.6)."""
    (pw, pl, rw, rl), (yw, yl) = _pair_logits(device, torch.float64)
    hw, hl = (torch.randn(3, 7, 5, dtype=torch.float64, device=device) for _ in range(2))
    kernel = kernels.RBFKernel(0.9)
    module = objx.DPOKernelLoss(loss_type=loss_type, beta=0.5, kernel=kernel, kernel_weight=0.2, divergence="kl",
                                divergence_coef=0.3, divergence_on="both", nll_coef=0.25)
    w = pw.clone().requires_grad_()
    loss, _ = module(w, pl, rw, rl, yw, yl, chosen_hidden=hw, rejected_hidden=hl)
    loss.backward()

    x = pw.clone().requires_grad_()
    cw, cl = yw != -100, yl != -100
    lp_w, lp_l = _token_logps_of(x, yw).sum(1), _token_logps_of(pl, yl).sum(1)
    n_w, n_l = cw.sum(1), cl.sum(1)
    kappa = 0.2 * (kernel.log_k(_pool(hw, ~cw), _pool(hw, cw)) - kernel.log_k(_pool(hw, ~cw), _pool(hl, cl)))
    if loss_type == "orpo":
        pref = -0.5 * F.logsigmoid(_log_odds(lp_w / n_w) - _log_odds(lp_l / n_l) + kappa)
    elif loss_type == "simpo":
        pref = -F.logsigmoid(0.5 * (lp_w / n_w - lp_l / n_l) - 0.5 + kappa)
    else:
        pref = -F.logsigmoid(0.5 * (lp_w - lp_l) + kappa)
    div = torch.cat([objx.reference.vocab_divergence(x, rw, "kl")[cw], objx.reference.vocab_divergence(pl, rl, "kl")[cl]])
    expected = pref.mean() + 0.3 * div.mean() + 0.25 * -lp_w.sum() / n_w.sum()
    expected.backward()
    assert_close(loss, expected, 1e-10, f"module {loss_type} with kernel and divergence")
    assert_close(w.grad, x.grad, 1e-10, f"module {loss_type} gradient")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_type", ["cpo", "simpo", "orpo", "ipo"])
def test_module_fused_heads_with_new_types(device, dtype, loss_type):
    """Hidden states and LM heads give the logits path's answer; no reference head for the
    reference-free types."""
    b, t, d, v = 3, 6, 8, 40
    mk = lambda *s: torch.randn(*s, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    hw, hl, rhw, rhl, w_pol, w_ref = mk(b, t, d), mk(b, t, d), mk(b, t, d), mk(b, t, d), mk(v, d), mk(v, d)
    yw, yl = (torch.randint(0, v, (b, t)).to(device) for _ in range(2))
    yw[:, :2] = -100
    yl[:, :2] = -100
    yl[0, 4:] = -100
    module = objx.DPOKernelLoss(loss_type=loss_type, beta=0.2, kernel=kernels.RBFKernel(), kernel_weight=0.1)
    ref_free = loss_type != "ipo"
    refs = (None, None) if ref_free else (rhw, rhl)
    fused_w = hw.clone().requires_grad_()
    fused, _ = module(fused_w, hl, *refs, yw, yl, policy_weight=w_pol, ref_weight=None if ref_free else w_ref)
    fused.backward()
    plain_w = hw.clone().requires_grad_()
    ref_logits = (None, None) if ref_free else (rhw @ w_ref.T, rhl @ w_ref.T)
    plain, _ = module(plain_w @ w_pol.T, hl @ w_pol.T, *ref_logits, yw, yl, chosen_hidden=plain_w, rejected_hidden=hl)
    plain.backward()
    loss_tol, grad_tol = _tolerances(dtype)
    assert_close(fused, plain, loss_tol, f"fused {loss_type}")
    assert_close(fused_w.grad, plain_w.grad, grad_tol, f"fused {loss_type} gradient")


# ---- empty batches, empty responses, bad arguments -----------------------------------------------

@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "simpo", "orpo", "aot"])
def test_empty_batch_gives_zero_loss_and_gradient(device, loss_type):
    """B = 0 is SPEC §0's mean over no counted rows: loss 0 and a zero gradient, never NaN (an empty
    micro-batch on one data-parallel rank still has to run its backward)."""
    pw, pl, rw, rl = (torch.randn(0, dtype=torch.float64, device=device).requires_grad_() for _ in range(4))
    nll = torch.randn(0, dtype=torch.float64, device=device)
    loss, metrics = objx.dpo_kernel_loss(pw, pl, rw, rl, loss_type=loss_type, nll=nll, nll_coef=0.5,
                                         divergence=torch.zeros(0, device=device), divergence_coef=0.1)
    assert loss.item() == 0.0
    assert metrics["reward_accuracy"].item() == 0.0 and metrics["reward_margin"].item() == 0.0
    loss.backward()
    assert pw.grad is not None and pw.grad.shape == (0,)


def test_module_divergence_without_response_tokens(device):
    """Every label ignored: the divergence term's mean over no tokens is 0, not NaN."""
    (pw, pl, rw, rl), (yw, yl) = _pair_logits(device, torch.float64)
    yw.fill_(-100)
    yl.fill_(-100)
    w = pw.clone().requires_grad_()
    loss, _ = objx.DPOKernelLoss(divergence="kl", divergence_coef=0.3, nll_coef=0.1)(w, pl, rw, rl, yw, yl)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-12)  # z = 0 for every pair: -log sigmoid(0)
    loss.backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_module_orpo_with_an_empty_response(device):
    (pw, pl, _, _), (yw, yl) = _pair_logits(device, torch.float64)
    yl[1].fill_(-100)
    w = pw.clone().requires_grad_()
    loss, _ = objx.DPOKernelLoss(loss_type="orpo")(w, pl, None, None, yw, yl)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(w.grad).all()


def test_module_empty_batch(device):
    (pw, pl, rw, rl), (yw, yl) = _pair_logits(device, torch.float64, pairs=0)
    w = pw.clone().requires_grad_()
    for loss_type in ("sigmoid", "orpo"):
        loss, _ = objx.DPOKernelLoss(loss_type=loss_type, divergence="kl", divergence_coef=0.3)(w, pl, rw, rl, yw, yl)
        assert loss.item() == 0.0
        loss.backward()


@pytest.mark.parametrize("loss_type,smoothing,match", [
    ("sigmoid", 1.5, r"label_smoothing must be in \[0, 1\], got 1.5"),
    ("sigmoid", -0.1, r"label_smoothing must be in \[0, 1\]"),
    ("sigmoid", float("nan"), r"label_smoothing must be in \[0, 1\], got nan"),
    ("robust", 0.5, r"label_smoothing must be in \[0, 0.5\) for loss_type 'robust'"),
    ("exo_pair", 0.0, r"label_smoothing must be in \(0, 1\) for loss_type 'exo_pair'"),
    ("exo_pair", 1.0, r"label_smoothing must be in \(0, 1\) for loss_type 'exo_pair'"),
    ("hinge", 0.1, r"label_smoothing is read only by .*'hinge' ignores it"),
])
def test_label_smoothing_ranges(device, loss_type, smoothing, match):
    pw, pl, rw, rl = (torch.randn(4, dtype=torch.float64, device=device) for _ in range(4))
    with pytest.raises(ValueError, match=match):
        objx.dpo_kernel_loss(pw, pl, rw, rl, loss_type=loss_type, label_smoothing=smoothing)
    with pytest.raises(ValueError, match=match):
        objx.DPOKernelLoss(loss_type=loss_type, label_smoothing=smoothing)(*_pair_logits(device, torch.float64)[0],
                                                                           *_pair_logits(device, torch.float64)[1])


def test_argument_errors(device):
    pw, pl, rw, rl = (torch.randn(4, dtype=torch.float64, device=device) for _ in range(4))
    n = torch.full((4,), 3, device=device)
    cases = [
        (dict(loss_type="robus"), "loss_type must be one of"),
        (dict(loss_type="sigmoid", ref_chosen_logps=None), "loss_type 'sigmoid' needs ref_chosen_logps"),
        (dict(loss_type=["simpo", "bco_pair"], ref_rejected_logps=None), "'bco_pair' needs ref_chosen_logps"),
        (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "loss_weights must have one weight per loss type"),
        (dict(chosen_lengths=n), "give both chosen_lengths and rejected_lengths"),
        (dict(chosen_lengths=n[:2], rejected_lengths=n[:2]), "chosen_lengths must be a tensor of token counts"),
        (dict(loss_type="bco_pair", f_divergence="js_divergence"), "defined only for loss types"),
        (dict(loss_type="simpo", f_divergence="forward_kl"), "use 'reverse_kl' with 'simpo'"),
        (dict(f_divergence="hellinger"), "f_divergence must be one of"),
        (dict(loss_type="nca_pair", kernel=kernels.RBFKernel(), prompt_emb=torch.zeros(4, 2), chosen_emb=torch.zeros(4, 2),
              rejected_emb=torch.zeros(4, 2), kernel_weight=0.1), "'nca_pair' does not have"),
        (dict(loss_type="orpo"), r"nll_coef=1.0 needs nll"),
        (dict(loss_type="sft"), "loss_type 'sft' needs nll"),
        (dict(loss_type="cpo", reduction="none"), "need reduction='mean'"),
        (dict(loss_type="discopop", discopop_tau=0.0), "discopop_tau must be > 0"),
        (dict(loss_type="simpo", simpo_gamma=float("inf")), "simpo_gamma must be finite"),
    ]
    for options, match in cases:
        args = dict(ref_chosen_logps=rw, ref_rejected_logps=rl)
        args.update(options)
        with pytest.raises(ValueError, match=match):
            objx.dpo_kernel_loss(pw, pl, **args)


def test_module_argument_errors(device):
    (pw, pl, rw, rl), (yw, yl) = _pair_logits(device, torch.float64)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        objx.DPOKernelLoss(loss_type="simpoo")
    with pytest.raises(ValueError, match="'ipo' needs ref_chosen_logits"):
        objx.DPOKernelLoss(loss_type="ipo")(pw, pl, None, None, yw, yl)
    with pytest.raises(ValueError, match="divergence term compares the policy with the reference"):
        objx.DPOKernelLoss(loss_type="simpo", divergence="kl", divergence_coef=0.1)(pw, pl, None, None, yw, yl)
    with pytest.raises(ValueError, match="give both ref_chosen_logits and ref_rejected_logits"):
        objx.DPOKernelLoss(loss_type="simpo")(pw, pl, rw, None, yw, yl)
    with pytest.raises(ValueError, match="ref_weight needs policy_weight"):
        objx.DPOKernelLoss(loss_type="simpo")(pw, pl, None, None, yw, yl, ref_weight=torch.zeros(3, 3))
