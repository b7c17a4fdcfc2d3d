import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from archsae.config import TrainConfig
from archsae.distill import kmeans
from archsae.errors import ArchsaeError
from archsae.sae import ArchetypalDictionary, build_sae, load_sae
from archsae.sae.dictionary import project_simplex_
from archsae.train import train
from conftest import planted_data, recovery, write_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    acts, atoms = planted_data()
    store = write_store(tmp_path_factory.mktemp("planted") / "store", acts)
    # In the standardised space the SAEs see, atom D_i becomes D_i / sigma (the data is centred).
    atoms_std = atoms / store.std_d.numpy()
    return store, atoms_std


def _random_level(planted, k, seed=1):  # not 0: planted_data draws its atoms from seed 0
    return recovery(np.random.default_rng(seed).normal(size=(k, planted.shape[1])), planted)


CFG = dict(k=48, top_k=2, epochs=20, batch_size=256, lr=3e-3, warmup_steps=20)


def test_topk_sae_recovers_planted_atoms(planted, tmp_path):
    store, atoms = planted
    model = train(store, TrainConfig(method="topk", **CFG), tmp_path / "topk")
    score = recovery(model.atoms().detach(), atoms)
    assert score > 0.95 and score > _random_level(atoms, CFG["k"]) + 0.3


def test_ra_sae_recovers_planted_atoms_and_keeps_its_constraints(planted, tmp_path):
    store, atoms = planted
    sample = store.standardise(store.sample(8000, seed=0, split="train")).numpy()
    candidates = torch.from_numpy(kmeans(sample, 96, seed=0))
    cfg = TrainConfig(method="ra-topk", delta=0.05, **CFG)
    model = train(store, cfg, tmp_path / "ra", candidates)
    score = recovery(model.atoms().detach(), atoms)
    assert score > 0.95 and score > _random_level(atoms, CFG["k"]) + 0.3
    w = model.dictionary.weights.detach()
    assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(len(w)), atol=1e-5)
    lam = model.dictionary.relaxation().detach().norm(dim=1)
    assert (lam <= cfg.delta + 1e-6).all() and lam.max() > 0.5 * cfg.delta  # the relaxation was used, not idle


def test_delta_zero_is_exact_a_sae():
    candidates = torch.randn(10, 4)
    d = ArchetypalDictionary(candidates, k=6, delta=0.0, w_init="random", generator=torch.Generator().manual_seed(0))
    assert d.relax is None
    with torch.no_grad():
        d.weights.sub_(0.3)  # push some entries negative, some rows possibly all-negative
    d.project_()
    atoms = d()
    assert torch.isfinite(atoms).all()
    assert (d.weights >= 0).all() and torch.allclose(d.weights.sum(1), torch.ones(6))


def test_w_is_projected_onto_the_simplex_and_stays_sparse_under_noisy_steps():
    # hand-computed: theta = (0.5 + 0.3 - 1) / 2 = -0.1, and -0.2 < theta is cut
    w = project_simplex_(torch.tensor([[0.5, 0.3, -0.2], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(w, torch.tensor([[0.6, 0.4, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    # the nearest simplex point (Duchi et al. 2008): KKT holds, and no random simplex point is nearer;
    # the warm start from the largest entries changes nothing
    v = torch.randn(20, 300, generator=torch.Generator().manual_seed(0)).double() * 2
    w = project_simplex_(v.clone(), warm=300)
    assert torch.equal(project_simplex_(v.clone(), warm=4), w)
    assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(20, dtype=torch.double))
    for row in range(20):
        gap = (v - w)[row][w[row] > 0]
        assert torch.allclose(gap, gap[:1].expand_as(gap)) and (v[row][w[row] == 0] <= gap[0] + 1e-12).all()
    others = torch.distributions.Dirichlet(torch.full((300,), 0.05)).sample((2000,)).double()
    assert ((v[:1] - w[:1]).norm() <= (v[:1] - others).norm(dim=1)).all()
    # a one-hot row plus +-1.5e-4: in float32 the fixed point's sum cancels against 1 and, unguarded, cycled
    gen = torch.Generator().manual_seed(0)
    near = torch.randn(50, 64, generator=gen).sign() * 1.5e-4 * (1 - 1e-4 * torch.rand(50, 64, generator=gen))
    near[:, 0] += 1
    w = project_simplex_(near)
    assert torch.allclose(w.sum(1), torch.ones(50)) and (w[:, 0] > 0.99).all()
    # Adam moves every entry by about lr per step; under zero-mean noise a one-hot row keeps most of its mass
    # through the projection, where clamping and renormalising (the authors' code) spreads it over the row
    gen, lr = torch.Generator().manual_seed(1), 0.004
    proj = torch.zeros(1, 64)
    proj[0, 0] = 1.0
    clip = proj.clone()
    for _ in range(100):
        proj = project_simplex_(proj + lr * torch.randn(1, 64, generator=gen).sign())
        clip = (clip + lr * torch.randn(1, 64, generator=gen).sign()).clamp(min=0)
        clip /= clip.sum()
    assert proj[0, 0] > 0.7 and clip[0, 0] < 0.2


@pytest.mark.parametrize("support", [0, 5])
def test_w_gradient_loses_only_the_direction_the_projection_discards(support):
    # candidates far from the origin and close together, as k-means centroids of uncentred data are
    gen = torch.Generator().manual_seed(0)
    candidates = 10 * torch.randn(1, 6, generator=gen) + torch.randn(12, 6, generator=gen)
    d = ArchetypalDictionary(candidates, k=4, delta=0.0, w_init="random", generator=gen, support=support)
    r_kd = torch.randn(4, 6, generator=gen)
    (d() * r_kd).sum().backward()
    support_km = d.support if d.support is not None else torch.arange(12).expand(4, 12)
    full = d.log_scale.exp().detach() * r_kd @ candidates.T  # dL/dW by hand, (k, n')
    full_km = full.gather(1, support_km)
    assert torch.allclose(d.weights.grad, full_km - full_km.mean(1, keepdim=True), atol=1e-5)
    assert not torch.allclose(d.weights.grad, full_km, atol=1e-2)
    # why the removed part is not needed (a property of the projection, true with or without the hook): an SGD
    # step then the projection lands where the step on the full gradient lands
    for lr in (1e-3, 1e-2, 1e-1):
        with torch.no_grad():
            w = d.weights.detach()
            assert torch.allclose(project_simplex_(w - lr * d.weights.grad), project_simplex_(w - lr * full_km),
                                  atol=1e-6)
    # a dictionary rebuilt from the state dict (as load_sae and a resumed checkpoint do) keeps the hook, through
    # gradients accumulated over two backward passes (micro-batches)
    rebuilt = ArchetypalDictionary(candidates, k=4, delta=0.0, w_init="random", generator=gen, support=support)
    rebuilt.load_state_dict(d.state_dict())
    for _ in range(2):
        (rebuilt() * r_kd).sum().backward()
    assert torch.allclose(rebuilt.weights.grad, 2 * d.weights.grad, atol=1e-5)


@pytest.mark.parametrize("k", [4, 10, 25])
def test_w_init_modes_make_no_zero_atoms_for_k_below_and_above_n_prime(k):
    candidates = torch.randn(10, 5)
    for mode in ("identity", "permuted", "spread", "random"):
        d = ArchetypalDictionary(candidates, k, 0.0, mode, torch.Generator().manual_seed(1))
        assert torch.allclose(d.weights.sum(1), torch.ones(k)) and (d().norm(dim=1) > 0).all()
    ident = ArchetypalDictionary(candidates, k, 0.0, "identity", torch.Generator().manual_seed(1))
    assert torch.allclose(ident.weights @ candidates, candidates[torch.arange(k) % 10])


def test_loading_a_missing_model_names_the_models_beside_it(planted, tmp_path):
    store, _ = planted
    train(store, TrainConfig(k=8, top_k=2, epochs=0.2, batch_size=512), tmp_path / "models" / "topk-s0")
    with pytest.raises(ArchsaeError, match="topk-s9 .model.safetensors missing.; models beside it: topk-s0$"):
        load_sae(tmp_path / "models" / "topk-s9")  # a typo
    with pytest.raises(ArchsaeError, match="it is a run directory, its models are .*models/topk-s0$"):
        load_sae(tmp_path)  # the run directory instead of a model folder


def test_killed_and_resumed_training_equals_uninterrupted(planted, tmp_path, monkeypatch, capsys):
    store, _ = planted
    cfg = TrainConfig(method="topk", k=24, top_k=2, epochs=2, batch_size=512, checkpoint_every=15)
    full = train(store, cfg, tmp_path / "full")
    real_batches = type(store).batches
    seen = {"n": 0}

    def dying_batches(self, *args, **kwargs):
        for batch in real_batches(self, *args, **kwargs):
            seen["n"] += 1
            if seen["n"] in (5, 30):  # before the first checkpoint, then after the one at step 15
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(type(store), "batches", dying_batches)
    with pytest.raises(KeyboardInterrupt):
        train(store, cfg, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):  # from step 0 again, and says so
        train(store, cfg, tmp_path / "resumed")
    assert "resumed has no checkpoint (stopped before its first, or deleted); training it from step 0" in \
        capsys.readouterr().err
    assert (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    with (tmp_path / "resumed" / "log.jsonl").open("a") as log:  # a line the kill cut short
        log.write('{"step": 29, "tokens"')
    monkeypatch.setattr(type(store), "batches", real_batches)
    capsys.readouterr()
    resumed = train(store, replace(cfg, checkpoint_every=7), tmp_path / "resumed")  # when it saves changes nothing
    assert "resuming resumed from step 15" in capsys.readouterr().err
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    log = lambda p: [json.loads(l)["step"] for l in (p / "log.jsonl").read_text().splitlines()]
    assert log(tmp_path / "full") == log(tmp_path / "resumed")
    reloaded = load_sae(tmp_path / "resumed")
    assert torch.equal(reloaded.atoms(), full.atoms())


def test_bad_settings_are_user_errors():
    with pytest.raises(ArchsaeError, match="top_k"):
        TrainConfig(k=8, top_k=16)
    with pytest.raises(ArchsaeError, match="delta"):
        TrainConfig(delta=-0.1)
    with pytest.raises(ArchsaeError, match="candidates"):
        build_sae(TrainConfig(method="ra-topk", k=8, top_k=2), d=5)
    with pytest.raises(ArchsaeError, match=r"\(n', 5\)"):
        build_sae(TrainConfig(method="ra-topk", k=8, top_k=2), d=5, candidates_nd=torch.randn(10, 4))
    with pytest.raises(ArchsaeError, match="NaN or Inf"):
        build_sae(TrainConfig(method="ra-topk", k=8, top_k=2), d=5, candidates_nd=torch.full((10, 5), float("nan")))


@pytest.mark.parametrize("method", ["relu", "jumprelu"])
def test_top_k_is_where_a_fixed_coefficient_s_gates_start(method):
    """With a fixed L1 / L0 coefficient top_k still sets the starting L0 (`init_from_data_`), so it is part of
    the configuration: a sweep over it trains one model per value, not one."""
    torch.manual_seed(0)
    x = torch.randn(4000, 16)
    for top_k in (2, 8):
        cfg = TrainConfig(method=method, k=32, top_k=top_k, l1=0.5, l0=0.5)
        assert cfg.canonical().top_k == top_k
        model = build_sae(cfg, 16)
        model.init_from_data_(x, cfg.top_k)
        with torch.no_grad():
            l0 = (model.activation(model.encoder(x - model.b_pre)) > 0).sum(1).float().mean().item()
        assert l0 == pytest.approx(top_k, rel=0.1)


def _dense_losses(model, x, dead, aux_k, aux_coeff):
    """The training loss written the plain way, from the definitions: dense codes = activation(encoder(x - b)),
    D built explicitly, the penalty of each mechanism, AuxK, plain autograd."""
    from archsae.sae.activations import JumpReLU, ReLU

    pre = model.encoder(x - model.b_pre)
    codes, atoms = model.activation(pre), model.atoms()
    x_hat = codes @ atoms + model.b_pre
    sst = (x - x.mean(0)).pow(2).sum()
    loss = (x_hat - x).pow(2).sum() / sst
    if isinstance(model.activation, ReLU):
        loss = loss + model.activation.coeff * (codes * atoms.norm(dim=1)).sum(1).mean() / (sst / len(x)).sqrt()
    if isinstance(model.activation, JumpReLU):
        l0 = model.activation._gate(pre).sum(1).mean()
        loss = loss + model.activation.penalty_coeff(l0.item()) * l0
    idx = pre.detach().masked_fill(~dead, -float("inf")).topk(aux_k, dim=1).indices
    e_hat = torch.zeros_like(pre).scatter(1, idx, torch.relu(pre.gather(1, idx))) @ atoms
    e = (x - x_hat).detach()
    # dead codes' gates: JumpReLU's thresholds fall, ReLU's biases rise, toward the pre-activations (held fixed)
    gate = {JumpReLU: lambda: torch.relu(model.activation.log_threshold.exp() - pre.detach()),
            ReLU: lambda: torch.relu(-(pre.detach() + model.encoder.bias - model.encoder.bias.detach()))}
    short_nk = gate[type(model.activation)]() if type(model.activation) in gate else torch.zeros_like(pre)
    gate_loss = short_nk[:, dead].sum(1).mean() / (sst / len(x)).sqrt()
    return loss + aux_coeff * ((e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum() + gate_loss), codes


@pytest.mark.parametrize("method,support,kernel,bandwidth", [
    ("topk", 0, "", 0), ("ra-topk", 8, "", 0), ("ra-topk", 0, "", 0), ("batchtopk", 0, "", 0), ("relu", 0, "", 0),
    ("a-relu", 8, "", 0), ("jumprelu", 0, "silverman", 0.5), ("ra-jumprelu", 8, "silverman", 0.5),
    ("jumprelu", 0, "rectangle", 0.5), ("ra-jumprelu", 8, "rectangle", 0.5), ("jumprelu", 0, "rectangle", 0.02)])
def test_sparse_training_pass_equals_dense_autograd(method, support, kernel, bandwidth):
    """Every sparsity's sparse training pass (chosen codes only, atoms gathered, AuxK in the same CSR matrix) gives
    the loss and every parameter's gradient of the dense definition, JumpReLU's straight-through threshold
    gradient included, with either kernel (the rectangle's through its window's entries only; at bandwidth 0.02
    some codes have no entry in it)."""
    torch.manual_seed(0)
    cfg = TrainConfig(method=method, k=64, top_k=4, w_support=support, delta=0.1, kernel=kernel or "rectangle",
                      bandwidth=bandwidth or 0.5)
    sparse, dense = (build_sae(cfg, 32, torch.randn(100, 32).mul(3)) for _ in range(2))
    x = torch.randn(128, 32)
    sparse.init_from_data_(x, 4)
    with torch.no_grad():  # a coefficient of the size that matters, and thresholds near many pre-activations
        sparse.activation.coeff.fill_(0.3) if hasattr(sparse.activation, "coeff") else None
    dense.load_state_dict(sparse.state_dict())
    dead = torch.zeros(64, dtype=torch.bool)
    dead[[1, 5, 9, 30, 31]] = True
    out = sparse.losses(x, dead, aux_k=3, aux_coeff=0.25)
    out.loss.backward()
    reference, codes = _dense_losses(dense, x, dead, 3, 0.25)
    reference.backward()
    assert torch.allclose(out.loss, reference, atol=1e-6)
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name
        assert p.grad.abs().sum() > 0, name  # every parameter learns, thresholds included
    assert int(out.l0) == int((codes > 0).sum()) > 0
    assert torch.equal(out.fired_k, (codes > 0).any(0))


@pytest.mark.parametrize("kernel", ["silverman", "rectangle"])
def test_jumprelu_threshold_gradient_is_the_kernel_estimator(kernel):
    from archsae.sae.activations import KERNELS, JumpReLU

    grid = torch.linspace(-40, 40, 200_001)
    tolerance = {"silverman": 1e-4, "rectangle": 1e-3}[kernel]  # the trapezoid rule misses half a step at a jump
    assert abs(torch.trapezoid(KERNELS[kernel](grid), grid).item() - 1) < tolerance  # a kernel: integrates to 1
    act = JumpReLU(k=2, coeff=0.5, bandwidth=0.01, threshold=0.01, kernel=kernel)
    pre = torch.tensor([[0.5, 0.012], [0.003, 0.0101]])
    z = act(pre)
    assert torch.equal(z, torch.tensor([[0.5, 0.012], [0.0, 0.0101]]))  # z = pre where pre > theta, else 0
    (z.sum() + act.coeff * act._gate(pre).sum(1).mean()).backward()  # the penalty as SAE.losses adds it
    # By hand: d/dtheta_j of sum_n z_nj + l0 * mean_n sum_j H = -sum_n (pre_nj + l0 / n) K((pre_nj - theta)/eps) / eps,
    # and d/dlog(theta) = theta * d/dtheta. The rectangle counts only the second column (|u| = 0.2 and 0.01 < 1/2).
    k = {"silverman": lambda u: 0.5 * math.exp(-abs(u) / math.sqrt(2)) * math.sin(abs(u) / math.sqrt(2) + math.pi / 4),
         "rectangle": lambda u: float(abs(u) < 0.5)}[kernel]
    expected = [-sum((p + 0.5 / 2) * k((p - 0.01) / 0.01) / 0.01 for p in col) * 0.01
                for col in ([0.5, 0.003], [0.012, 0.0101])]
    assert torch.allclose(act.log_threshold.grad, torch.tensor(expected), rtol=1e-4)
    assert (act.log_threshold.grad[0] == 0) == (kernel == "rectangle")


def test_batchtopk_keeps_the_batch_budget_and_calibrates_its_threshold():
    from archsae.sae.activations import BatchTopK

    act = BatchTopK(top_k=3).train()
    pre = torch.randn(200, 50)
    z = act(pre)
    assert int((z > 0).sum()) == 200 * 3  # exactly n * top_k codes over the batch ...
    assert (z > 0).sum(1).float().std() > 0  # ... spread unevenly over the tokens
    decoy = torch.rand(200, 50).flatten().index_add_(0, torch.arange(0, 10_000, 17), torch.full((589,), 9.0))
    # the training pass's sparse selection gives the definition's codes: on plain pre-activations, with fewer
    # positives than the budget, and when the entries its threshold is estimated from are the largest (decoy)
    for batch in (pre, pre.clamp(max=-0.1).index_fill(1, torch.tensor([7]), 1.0), decoy.view(200, 50)):
        cols, counts = act.select(batch)
        chosen = torch.zeros_like(batch, dtype=torch.bool)
        chosen[torch.arange(200).repeat_interleave(counts), cols] = True
        assert len(cols) == 200 * 3 and torch.equal(chosen & (batch > 0), act(batch) > 0)
    act.calibrate(pre)
    act.eval()
    assert int((act(pre) > 0).sum()) == 200 * 3 - 1  # the threshold is the budget's smallest value (strict >)


def test_auxk_gives_gradient_to_dead_codes_only_through_the_aux_loss():
    torch.manual_seed(0)
    model = build_sae(TrainConfig(method="topk", k=40, top_k=2), 16)
    with torch.no_grad():
        model.encoder.weight[:10] *= 1e-3  # codes 0-9 never win the top-k: dead, but their pre > 0 sometimes
        model.encoder.bias[:10] = 1e-3
    dead = torch.zeros(40, dtype=torch.bool)
    dead[:10] = True
    x = torch.randn(256, 16)
    for aux_k, expect_grad in ((0, False), (4, True)):
        model.zero_grad()
        out = model.losses(x, dead, aux_k=aux_k)
        out.loss.backward()
        assert not out.fired_k[:10].any()
        assert (model.encoder.weight.grad[:10].abs().sum() > 0) == expect_grad
        assert (model.dictionary.weight.grad[:10].abs().sum() > 0) == expect_grad


@pytest.mark.parametrize("method", ["jumprelu", "relu"])
def test_a_dead_code_whose_gate_is_above_every_pre_activation_fires_again(method):
    """A JumpReLU threshold (ReLU bias) pushed past every pre-activation of its code gets no gradient from the
    reconstruction or the kernel; the dead codes' gate loss brings it back within a few Adam steps, and leaves
    the gates of live codes alone."""
    torch.manual_seed(0)
    model = build_sae(TrainConfig(method=method, k=32, top_k=4), 16)
    x = torch.randn(512, 16)
    model.init_from_data_(x, 4)
    with torch.no_grad():  # codes 0-3 silenced: thresholds 5x their largest pre-activation, biases 1 below it
        pre = model.encoder(x - model.b_pre)
        if method == "jumprelu":
            model.activation.log_threshold[:4] = (5 * pre[:, :4].max(0).values).log()
        else:
            model.encoder.bias[:4] -= pre[:, :4].max(0).values + 1
    gate = model.activation.log_threshold if method == "jumprelu" else model.encoder.bias
    live_before = gate[4:].detach().clone()
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:4] = True
    assert not model.losses(x, dead, aux_k=4).fired_k[:4].any()
    opt = torch.optim.Adam([gate], lr=0.1)
    for _ in range(40):
        opt.zero_grad()
        with torch.no_grad():  # the gate loss alone: no reconstruction, penalty or AuxK gradient
            pre = model.encoder(x - model.b_pre)
        model.activation.dead_gate_loss(pre[:, dead], dead.nonzero().squeeze(1), model.encoder.bias).backward()
        opt.step()
    assert model.losses(x, dead, aux_k=4).fired_k[:4].all()
    assert torch.equal(gate[4:].detach(), live_before)


@pytest.mark.parametrize("method", ["topk", "relu", "a-topk", "ra-jumprelu", "ra-batchtopk"])
def test_resampling_moves_dead_codes_toward_badly_reconstructed_tokens(method):
    """Dead codes restart where the model errs: a free atom on the residual of a badly reconstructed token, an
    archetypal one exactly on the candidate closest in angle to such a residual (W one-hot, Lambda = 0), never
    on one a live atom or another resampled atom already sits on; its encoder row tied to it (at 0.2 x the live
    rows' norm), so it responds most to a missed token, its gate open on top_k / k of the tokens; live codes
    untouched."""
    torch.manual_seed(0)
    k, d = 32, 16
    candidates = torch.randn(96, d)
    support = 0 if method == "ra-batchtopk" else 8  # a dense W too
    model = build_sae(TrainConfig(method=method, k=k, top_k=4, w_support=support), d, candidates)
    x = torch.randn(512, d) * torch.linspace(0.2, 3.0, d)
    model.init_from_data_(x, 4)
    x[:8] *= 30  # 8 tokens the model misses by far: the draw (prob. ~ error^2) should pick among them
    dead = torch.zeros(k, dtype=torch.bool)
    dead[[1, 5, 6, 20]] = True
    with torch.no_grad():  # silence them: never selected, whatever the sparsity
        model.encoder.weight[dead] = 0.0
        model.encoder.bias[dead] = -100.0
        residual = x - (model.activation(model.encoder(x - model.b_pre)) @ model.atoms() + model.b_pre)
    high = residual.pow(2).sum(1) >= residual.pow(2).sum(1).sort(descending=True).values[7]
    assert high[:8].all()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    before_w = model.dictionary.dense_weights() if model.config.archetypal else None
    assert not model.losses(x, dead, aux_k=4).fired_k[dead].any()
    rows = model.resample_dead_(dead, x, 4, torch.Generator().manual_seed(0))
    assert rows.tolist() == [1, 5, 6, 20]
    atoms = model.atoms().detach()
    unit = lambda m: m / m.norm(dim=1, keepdim=True)
    if model.config.archetypal:
        weights = model.dictionary.dense_weights()
        cols = weights[rows].argmax(1)
        assert torch.equal(weights[rows], torch.eye(96)[cols])  # W one-hot
        assert torch.equal(weights[~dead], before_w[~dead])  # (support included)
        if model.dictionary.relax is not None:
            assert torch.equal(model.dictionary.relax[rows], torch.zeros(4, d))
        assert torch.allclose(unit(atoms[rows]), unit(candidates[cols]), atol=1e-6)
        taken = set(weights[~dead].argmax(1).tolist())
        assert len(set(cols.tolist())) == 4 and not taken & set(cols.tolist())  # no duplicate made
        free = torch.tensor([c not in taken for c in range(96)])
        # each is among the 4 free candidates closest to some outlier's residual (4: the greedy takes at most 3
        # before it); a token drawn at random would rarely be an outlier
        top4 = (unit(residual[high]) @ unit(candidates).T).masked_fill(~free, -2).topk(4, dim=1).indices
        assert all((top4 == c).any() for c in cols.tolist())
    else:  # each new atom is the direction of an outlier's residual
        assert ((unit(atoms[rows]) @ unit(residual[high]).T).max(1).values > 0.999).all()
    scale = 0.2 * before["encoder.weight"][~dead].norm(dim=1).mean()
    assert torch.allclose(model.encoder.weight[rows], unit(atoms[rows]) * scale, atol=1e-6)
    codes = model.activation(model.encoder(x - model.b_pre))
    if method in ("relu", "ra-jumprelu"):  # gates at the quantile that lets each fire on top_k / k of the tokens
        assert ((codes[:, rows] > 0).float().mean(0) - 4 / k).abs().max() < 2 / len(x)
    else:
        assert torch.equal(model.encoder.bias[rows], torch.zeros(4))
    assert high[model.encoder(x - model.b_pre)[:, rows].argmax(0)].all()  # each responds most to an outlier
    for name, p in model.named_parameters():  # live codes keep every parameter
        if p.ndim and len(p) == k:
            assert torch.equal(p.detach()[~dead], before[name][~dead]), name
    assert {name for name, p in model.named_parameters() if p.ndim and len(p) == k} == {
        name for name, p in model.named_parameters() if any(p is q for q in model.code_parameters())}
    # (torchrun re-syncs these tensors: `_Trainer._broadcast_resampled`)
    assert {name for name, b in model.dictionary.named_buffers() if b.ndim and len(b) == k} == {
        name for name, b in model.dictionary.named_buffers() if any(b is q for q in model.dictionary.code_buffers())}


def test_resampling_caps_its_draw_and_survives_every_code_dead():
    """At most n / 4 codes per call (a seeded choice among the dead), so the draw stays weighted by the error;
    with every code dead, the encoder's scale comes from all rows; a non-finite reconstruction changes nothing."""
    torch.manual_seed(0)
    model = build_sae(TrainConfig(method="a-topk", k=40, top_k=2, w_support=4), 8, torch.randn(64, 8))
    x = torch.randn(40, 8)
    every = torch.ones(40, dtype=torch.bool)
    scale = 0.2 * model.encoder.weight.norm(dim=1).mean()
    rows = model.resample_dead_(every, x, 2, torch.Generator().manual_seed(0))
    assert len(rows) == 10 and len(set(model.dictionary.support[rows, 0].tolist())) == 10
    assert torch.allclose(model.encoder.weight[rows].norm(dim=1), scale.expand(10))
    again = model.resample_dead_(every, x, 2, torch.Generator().manual_seed(1))
    assert len(again) == 10 and not torch.equal(again, rows)  # another seeded choice
    state = {name: t.clone() for name, t in model.state_dict().items()}
    assert len(model.resample_dead_(every, torch.full((40, 8), float("nan")), 2, torch.Generator())) == 0
    assert all(torch.equal(state[name], t) for name, t in model.state_dict().items())


def test_spread_init_starts_atoms_on_the_most_distinct_candidates():
    """Farthest-point sampling in angle: each chosen candidate has the smallest largest |cos| with those before it
    (brute force), so from 4 tight bundles of 5 candidates and one lone direction, 5 atoms take one from each
    bundle and the lone one, where a random 5 of the 21 would take the lone one 1 time in 4."""
    from archsae.sae.dictionary import spread_columns

    g = torch.Generator().manual_seed(0)
    unit = lambda m: m / m.norm(dim=-1, keepdim=True)
    candidates = torch.randn(30, 6, generator=g) * torch.rand(30, 1, generator=g)  # any norms: only angles count
    cols = spread_columns(candidates, 12, torch.Generator().manual_seed(3)).tolist()
    cos = (unit(candidates) @ unit(candidates).T).abs()
    for i in range(1, 12):
        assert cols[i] not in cols[:i]
        assert torch.isclose(cos[cols[i], cols[:i]].max(), cos[:, cols[:i]].max(1).values.min(), atol=1e-6)
    bundles = unit(torch.eye(6)[:4])
    bundled = torch.cat([unit(b + 0.05 * torch.randn(5, 6, generator=g)) for b in bundles])
    lone = unit(torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0]]))
    candidates = torch.cat([bundled, 3 * lone])  # index 20 is the lone direction
    for seed in range(5):
        cols = spread_columns(candidates, 5, torch.Generator().manual_seed(seed))
        assert 20 in cols.tolist() and sorted(c // 5 for c in cols.tolist() if c < 20) == [0, 1, 2, 3]


def test_spread_start_with_as_many_atoms_as_candidates_takes_each_once_without_the_search(monkeypatch):
    import archsae.sae.dictionary as dictionary

    def no_search(*args):
        raise AssertionError("farthest-point search where every candidate is taken anyway")

    monkeypatch.setattr(dictionary, "spread_columns", no_search)
    candidates = torch.randn(10, 5)
    for k in (10, 20):
        cols = dictionary._initial_columns(k, candidates, "spread", torch.Generator().manual_seed(0))
        assert sorted(cols.tolist()) == sorted(list(range(10)) * (k // 10))


@pytest.mark.parametrize("k", [6, 25])
def test_sparse_support_w_starts_like_the_dense_one_and_stays_row_stochastic(k):
    from archsae.sae.dictionary import nearest_candidates

    candidates = torch.randn(10, 5)
    gen = lambda: torch.Generator().manual_seed(1)
    for mode in ("identity", "permuted", "spread"):
        dense = ArchetypalDictionary(candidates, k, 0.0, mode, gen(), support=0)
        sparse = ArchetypalDictionary(candidates, k, 0.0, mode, gen(), support=4)
        assert sparse.weights.shape == (k, 4) and torch.allclose(sparse(), dense())
        assert torch.equal(sparse.dense_weights(), dense.weights.detach())
    rand = ArchetypalDictionary(candidates, k, 0.0, "random", gen(), support=4)
    assert (rand().norm(dim=1) > 0).all() and (rand.dense_weights() > 0).sum(1).eq(4).all()
    with torch.no_grad():
        rand.weights.sub_(0.2)
    rand.project_()
    assert (rand.weights >= 0).all() and torch.allclose(rand.weights.sum(1), torch.ones(k))
    # the support is the start candidate, then its nearest others, by brute force
    cols = torch.tensor([3, 7])
    dist = torch.cdist(candidates, candidates)
    for row, col in zip(nearest_candidates(candidates, cols, 4), cols):
        others = [j for j in dist[col].argsort().tolist() if j != col][:3]
        assert row.tolist() == [col.item()] + others


def test_encoder_starts_tied_to_the_unit_atoms_free_and_archetypal():
    for method in ("topk", "ra-topk"):
        model = build_sae(TrainConfig(method=method, k=16, top_k=2), 8, torch.randn(40, 8) * 3)
        atoms = model.atoms().detach()
        assert torch.allclose(model.encoder.weight, atoms / atoms.norm(dim=1, keepdim=True), atol=1e-6)
        assert torch.equal(model.encoder.bias, torch.zeros(16))


def test_learned_sparsities_start_at_their_l0_and_at_the_least_squares_code_scale():
    """Archetypal atoms all point into the data: tied projections overshoot it (R^2 << 0) unless the codes'
    scale is fitted (then the error exceeds that of reconstructing nothing); the fit keeps the quantile
    start's L0. TopK keeps its plain tied start."""
    x = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0)) + 2.0  # a mean far from the origin
    for method in ("a-relu", "a-jumprelu", "ra-jumprelu", "relu", "a-topk"):
        model = build_sae(TrainConfig(method=method, k=64, top_k=4), 16, x[:200])
        tied = model.encoder.weight.clone()
        with torch.no_grad():
            model.init_from_data_(x, 4)
            codes, atoms = model.activation(model.encoder(x - model.b_pre)), model.atoms()
            error = {s: (x - model.b_pre - s * codes @ atoms).pow(2).sum().item() for s in (0.95, 1.0, 1.05)}
        if method == "a-topk":
            assert torch.equal(model.encoder.weight, tied)
            continue
        assert abs((codes > 0).float().sum(1).mean().item() - 4) < 0.2, method
        assert error[1.0] <= min(error[0.95], error[1.05]), (method, error)  # the least-squares scale
        assert error[1.0] < (x - model.b_pre).pow(2).sum().item(), method  # better than no reconstruction


def test_loss_is_fvu_plus_auxk_normalised_by_the_residual_variance():
    """By hand: FVU of the batch, plus aux_coeff times the FVU of the residual reconstructed by the dead codes'
    largest pre-activations."""
    torch.manual_seed(0)
    model = build_sae(TrainConfig(method="topk", k=12, top_k=2), 6)
    x = torch.randn(50, 6)
    dead = torch.zeros(12, dtype=torch.bool)
    dead[[3, 7, 9]] = True
    out = model.losses(x, dead, aux_k=2, aux_coeff=0.25)
    with torch.no_grad():
        x_hat, _ = model(x)
        fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        pre = model.encoder(x - model.b_pre)
        masked = pre.masked_fill(~dead, -float("inf"))
        idx = masked.topk(2, dim=1).indices
        z = torch.zeros_like(pre).scatter(1, idx, torch.relu(pre.gather(1, idx)))
        e, e_hat = x - x_hat, z @ model.atoms()
        aux = (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    assert out.loss.item() == pytest.approx((fvu + 0.25 * aux).item(), rel=1e-5)
    assert model.losses(x, dead, aux_k=0).loss.item() == pytest.approx(fvu.item(), rel=1e-5)


def test_adapted_coefficients_move_towards_the_target_l0():
    from archsae.sae.activations import ADAPT_RATE, PROPORTIONAL, JumpReLU, ReLU

    relu = ReLU(0.1, target_l0=8)
    relu.adapt_(16.0)  # twice the target: log 2, under the clip of 1
    assert relu.coeff.item() == pytest.approx(0.1 * math.exp(ADAPT_RATE * math.log(2)))
    relu.adapt_(0.0)  # far below: clipped at -1
    assert relu.coeff.item() == pytest.approx(0.1 * math.exp(ADAPT_RATE * (math.log(2) - 1)))
    fixed = ReLU(0.1)
    fixed.adapt_(100.0)
    assert fixed.coeff.item() == pytest.approx(0.1)
    jump = JumpReLU(4, 1e-3, target_l0=8)
    # The batch's penalty adds a proportional term on its own L0 to the integrated multiplier.
    assert jump.penalty_coeff(16.0).item() == pytest.approx(1e-3 + PROPORTIONAL * 1e-3 * math.log(2))
    assert jump.penalty_coeff(8.0).item() == pytest.approx(1e-3)
    assert relu.penalty_coeff(16.0) is relu.coeff  # ReLU's L1 coefficient: integral only
    for _ in range(100):  # L0 too low: the multiplier crosses 0 and grows negative
        jump.adapt_(2.0)
    assert jump.coeff.item() < -1e-3


def test_too_few_candidates_for_the_atoms_is_a_user_error():
    cfg = TrainConfig(method="a-topk", k=32, top_k=2)
    with pytest.raises(ArchsaeError, match="n' = 20"):
        build_sae(cfg, 4, torch.randn(20, 4))
    build_sae(replace(cfg, w_init="random"), 4, torch.randn(20, 4))  # random mixtures start distinct anyway


def test_relaxation_is_delta_times_a_unit_bounded_direction():
    d = ArchetypalDictionary(torch.randn(30, 5), k=10, delta=0.3, w_init="permuted",
                             generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d.relax.normal_().mul_(5)
    d.project_()
    assert (d.relax.norm(dim=1) <= 1 + 1e-6).all()
    assert torch.allclose(d.relaxation().norm(dim=1), torch.full((10,), 0.3), atol=1e-6)
    assert torch.allclose(d(), (d.dense_weights() @ d.candidates + d.relaxation()) * d.log_scale.exp(), atol=1e-5)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(planted, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    store, _ = planted
    cfg = TrainConfig(method="topk", k=24, top_k=2, epochs=2, batch_size=512, checkpoint_every=20)
    real_batches = type(store).batches
    seen = {"n": 0}

    def poisoned_batches(self, *args, **kwargs):
        for batch in real_batches(self, *args, **kwargs):
            seen["n"] += 1
            yield batch * float("nan") if seen["n"] == 25 else batch  # after the checkpoint at step 20

    monkeypatch.setattr(type(store), "batches", poisoned_batches)
    with pytest.raises(ArchsaeError, match="diverged by step 30 .*last good checkpoint"):
        train(store, cfg, tmp_path / "m")
    out = tmp_path / "m"
    assert not (out / "model.safetensors").exists()
    ckpt = load_file(str(out / "checkpoint.safetensors"))
    assert all(torch.isfinite(v).all() for v in ckpt.values() if v.is_floating_point())
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]  # valid JSON
    assert [r["step"] for r in rows] == [9, 19] and all(np.isfinite(r["loss"]) for r in rows)


def test_a_checkpoint_resumes_only_on_as_many_processes_as_it_was_started_on(planted, tmp_path, monkeypatch):
    import importlib

    train_module = importlib.import_module("archsae.train")  # the module (archsae.train is its function)
    store, _ = planted
    cfg = TrainConfig(method="topk", k=24, top_k=2, epochs=2, batch_size=512, checkpoint_every=10, streams=2)
    real_batches = type(store).batches

    def dying_batches(self, *args, **kwargs):
        for i, batch in enumerate(real_batches(self, *args, **kwargs)):
            if i == 15:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(type(store), "batches", dying_batches)
    with pytest.raises(KeyboardInterrupt):
        train(store, cfg, tmp_path / "m")  # one process, two streams; checkpoint at step 10
    monkeypatch.setattr(type(store), "batches", real_batches)
    two = train_module.World(rank=0, size=2)  # as torchrun --nproc-per-node 2 would join (refused before any collective)
    monkeypatch.setattr(train_module.World, "from_env", classmethod(lambda cls, device: two))
    with pytest.raises(ArchsaeError, match="checkpoint of a run on 1 process"):
        train(store, cfg, tmp_path / "m")


def test_reconstruct_keeps_codes_sparse_and_equal_to_the_dense_pass():
    """evaluate's reconstruct (chunks of 2^24 / k tokens) gives the model's own codes, as a scipy CSR matrix, and
    its reconstruction."""
    import scipy.sparse

    from archsae.evaluate import reconstruct

    torch.manual_seed(0)
    model = build_sae(TrainConfig(method="topk", k=2**15, top_k=3), 8).eval()  # 512 tokens per chunk
    acts = torch.randn(1100, 8)
    acts_hat, codes = reconstruct(model, acts)
    with torch.no_grad():
        expected_hat, expected = model(acts)
    assert scipy.sparse.isspmatrix_csr(codes) and codes.nnz <= 1100 * 3
    assert torch.equal(torch.from_numpy(codes.toarray()), expected) and torch.allclose(acts_hat, expected_hat)


def test_a_model_saved_before_an_option_existed_loads_as_it_was_trained(tmp_path):
    """A config.json without `resample_every` (older archsae) means no resampling, not today's default; without
    `kernel`, Silverman's."""
    from archsae.sae.model import sae_config, save_sae

    cfg = TrainConfig(method="topk", k=8, top_k=2)
    config = sae_config(cfg, 4)
    del config["train"]["resample_every"]
    save_sae(build_sae(cfg, 4), tmp_path / "old", config)
    assert load_sae(tmp_path / "old").config.resample_every == 0
    save_sae(build_sae(cfg, 4), tmp_path / "new", sae_config(cfg, 4))
    assert load_sae(tmp_path / "new").config.resample_every == cfg.resample_every == 25
    # a fixed-coefficient ReLU saved with k < top_k (top_k was ignored then, stored at its default): loads
    relu = TrainConfig(method="relu", k=8, top_k=2, l1=0.5)
    config = sae_config(relu, 4)
    config["train"]["top_k"] = 32
    save_sae(build_sae(relu, 4), tmp_path / "relu", config)
    assert load_sae(tmp_path / "relu").config.top_k == 8
    # a JumpReLU saved before the rectangle kernel became the default was trained with Silverman's
    jump = TrainConfig(method="jumprelu", k=8, top_k=2)
    config = sae_config(jump, 4)
    del config["train"]["kernel"]
    save_sae(build_sae(jump, 4), tmp_path / "jump", config)
    assert load_sae(tmp_path / "jump").config.kernel == "silverman" != jump.kernel
    assert load_sae(tmp_path / "jump").activation.kernel == "silverman"


@pytest.mark.parametrize("support", [0, 4])
def test_a_loaded_archetypal_sae_is_the_saved_one_without_redoing_w_init(tmp_path, monkeypatch, support):
    """load_sae leaves W's (slow) initialisation out and fills W, its support and Lambda from the file."""
    import archsae.sae.dictionary as dictionary
    from archsae.sae.model import sae_config, save_sae

    cfg = TrainConfig(method="ra-topk", k=8, top_k=2, w_support=support, delta=0.5)
    model = build_sae(cfg, 6, torch.randn(20, 6) * 3)
    with torch.no_grad():
        model.dictionary.weights.copy_(torch.rand_like(model.dictionary.weights))
        model.dictionary.relax.normal_()
    save_sae(model, tmp_path / "m", sae_config(cfg, 6))
    for init in ("init_support", "init_weights", "spread_columns"):
        monkeypatch.setattr(dictionary, init, lambda *args: pytest.fail(f"{init} ran while loading"))
    loaded = load_sae(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert torch.equal(loaded.atoms(), model.atoms().detach())
