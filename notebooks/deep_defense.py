# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Deep Defense: the DeepFool-perturbation regularizer
#
# Deep Defense {cite}`yan2018deep` adds to the training objective a term built from the DeepFool
# perturbation {cite}`moosavi2016deepfool` of every training image. With $\rho_k = \|\Delta x_k\|_2/\|x_k\|_2$,
#
# $$L(W) = \frac1B\sum_k \mathrm{CE}(y_k, f(x_k)) + \frac{\lambda}{B}\sum_{k\ \text{correct}} e^{-c\rho_k}
#   + \frac{\lambda}{B}\sum_{k\ \text{wrong}} e^{d\rho_k},$$
#
# where $\Delta x_k$ leaves the predicted class for a correctly classified image and reaches the true class
# for a misclassified one (DeepFool-$\ell_2$, all classes, overshoot 0.02, 5 iterations, each step linearized at
# $x + \sum r$ and fooling tested at $x + 1.02\sum r$ as in the official code). $\Delta x$ is a
# function of the weights, and the gradient of the regularizer flows through every DeepFool step: the paper
# builds an "inverse network" for this, we let autograd unroll the same computation
# (`robustness.defenses.DeepDefenseLoss`, batched over images and classes). Defaults $\lambda=15$, $c=25$,
# $d=5$; the official recipe fine-tunes a pretrained reference model for 5 epochs (SGD, momentum 0.9,
# lr $5\cdot10^{-4}$, weight decay $5\cdot10^{-4}$, batch 100, BN frozen, lr × 0.5 before epoch `0.8·epochs`:
# epoch 4 of 5, never in a 1- or 2-epoch run, which we follow).
#
# **The claim.** ρ_adv rises substantially with no loss of clean accuracy, more than with adversarial
# training. **What we add.** ρ_adv is measured with the very attack the model was trained against (5-step
# DeepFool). We re-measure robustness with an adaptive $\ell_2$ worst case (PGD-$\ell_2$ {cite}`madry2018towards`
# with cross-entropy and margin losses, the gradient-free Square attack {cite}`andriushchenko2020square`, and
# transfer from the plain fine-tuned
# control) and a minimum-norm attack, DDN {cite}`rony2019decoupling`, and we time the regularizer.

# %% tags=["parameters"]
profile = "auto"  # smoke | laptop | paper | auto (paper on a GPU, else laptop)
ref_size_mnist = None  # MNIST training images for the reference models (the first N)
ref_size_cifar = None  # CIFAR-10 training images for the reference ConvNet (the first N)
ref_epochs_mnist = None  # reference-model training epochs, MNIST
ref_epochs_cifar = None  # reference-model training epochs, CIFAR-10
ref_lr = None  # reference-model SGD learning rate
ft_size_mlp = None  # MNIST images used to fine-tune the MLP (the first N)
ft_size_lenet = None  # MNIST images used to fine-tune LeNet (the first N)
ft_size_cifar = None  # CIFAR-10 images used for fine-tuning (the first N)
ft_epochs = None  # fine-tuning epochs (same for every variant)
ft_lr = None  # fine-tuning learning rate (official 5e-4)
flip_cifar = None  # flip each CIFAR-10 fine-tuning image horizontally with probability 0.5, as the official data loader
lam = None  # Deep Defense λ
c = None  # Deep Defense c (weight of ρ for correct samples)
d = None  # Deep Defense d (weight of ρ for misclassified samples)
df_iter = None  # DeepFool iterations, in training and in the paper's ρ_adv
rho_reference = None  # where ρ (‖Δx‖/‖x‖) is measured in the loss (mean_image: matconvnet's per-pixel-mean-subtracted input, the paper's scale): mean_image, normalized, pixels
adv_attack = None  # examples for adversarial fine-tuning: fgsm, deepfool
adv_eps_factor = None  # FGSM fine-tuning radius as a multiple of ε_ref
lambda_sweep = None  # λ values for the trade-off sweep (on the MLP)
n_eval = None  # MNIST test images for ρ_adv and attacks (the first N)
n_eval_cifar = None  # CIFAR-10 test images for ρ_adv and attacks (the first N, ≤ 1000)
n_epoch_eval = None  # test images for ρ_adv after each epoch
ddn_steps = None  # DDN (minimum-norm L2 attack) steps; convergence is checked with twice as many
l2_eps_mnist = None  # MNIST: L2 radii ([0, 1] pixels) of the adaptive worst-case curve
l2_eps_cifar = None  # CIFAR-10: L2 radii ([0, 1] pixels) of the adaptive worst-case curve
pgd_eps_mnist = None  # MNIST: the claim's L2 radius (health checks, headline), one of l2_eps_mnist
pgd_eps_cifar = None  # CIFAR-10: the claim's L2 radius (health checks, headline), one of l2_eps_cifar
pgd_steps = None  # steps of the PGD-L2 members (CE, margin, transfer) and of the cost table
restarts = None  # random restarts of the PGD members
square_queries = None  # queries per image of the Square-L2 member
n_adaptive = None  # test images for the adaptive worst case (the first N)
n_health = None  # test images for the evaluation-health checks (the first N)
health_steps = None  # PGD-L2 steps of the health checks
cost_batches = None  # training batches timed per loss for the cost table
cost_batch_size = None  # images per timed batch (the training batch is 100)
eps_ref_iter = None  # DeepFool-L∞ iterations for ε_ref, and DeepFool-L2 iterations of the converged ρ compared with the anchors
batch_size = None  # attack batch size
seed = None  # random seed

# %%
from IPython.display import Markdown, display

from robustness.chapters.deep_defense import SPEC
from robustness.config import resolve

cfg = resolve(SPEC, profile=profile, ref_size_mnist=ref_size_mnist, ref_size_cifar=ref_size_cifar,
              ref_epochs_mnist=ref_epochs_mnist, ref_epochs_cifar=ref_epochs_cifar, ref_lr=ref_lr,
              ft_size_mlp=ft_size_mlp, ft_size_lenet=ft_size_lenet, ft_size_cifar=ft_size_cifar,
              ft_epochs=ft_epochs, ft_lr=ft_lr, flip_cifar=flip_cifar, lam=lam, c=c, d=d, df_iter=df_iter,
              rho_reference=rho_reference, adv_attack=adv_attack, adv_eps_factor=adv_eps_factor,
              lambda_sweep=lambda_sweep, n_eval=n_eval, n_eval_cifar=n_eval_cifar, n_epoch_eval=n_epoch_eval,
              ddn_steps=ddn_steps, l2_eps_mnist=l2_eps_mnist, l2_eps_cifar=l2_eps_cifar,
              pgd_eps_mnist=pgd_eps_mnist, pgd_eps_cifar=pgd_eps_cifar, pgd_steps=pgd_steps, restarts=restarts,
              square_queries=square_queries, n_adaptive=n_adaptive, n_health=n_health, health_steps=health_steps,
              cost_batches=cost_batches, cost_batch_size=cost_batch_size, eps_ref_iter=eps_ref_iter,
              batch_size=batch_size, seed=seed)
display(Markdown(cfg.markdown()))

# %% [markdown]
# ## Setup: models, ρ in the paper's units, ε_ref
#
# The paper's three small networks: the MLP 784-500-150-10 and LeNet on MNIST, the ConvNet on CIFAR-10
# (CIFAR-10 is evaluated on the first test images of the offline copy, at most 1,000). Each starts as a
# *reference model* trained with plain cross-entropy; every variant is then fine-tuned from it for the same
# number of epochs on the same images with the official recipe: **plain fine-tuning** (the control, since
# extra epochs alone can move ρ), **adversarial fine-tuning** (50 % clean + 50 % FGSM
# {cite}`goodfellow2015explaining` examples at `adv_eps_factor` × ε_ref, crafted against the current weights;
# our choice of control, not the paper's adversarial-training baseline) and **Deep Defense**. On CIFAR-10 every
# variant sees each image flipped horizontally with probability 0.5, as the official loader does (no crops).
#
# **ρ in the paper's units.** Our models take $[0,1]$ pixels and normalize inside. The paper's matconvnet
# models took the image minus the **per-pixel mean image** of the training set, so its $\|x\|$ is smaller and its
# ρ larger than a pixel-space ρ of the same perturbation, by the factor $\|x\|/\|x-m\|$ in the table below
# (about 1.29 on MNIST; a per-channel mean would give only 1.08). The loss therefore measures
# $\rho = \|\Delta x\|/\|x - m\|$ (`rho_reference = "mean_image"`), so that $c$ and $d$ mean what they mean in
# the paper, and every ρ_adv below is in these units and averaged as the official `test()` averages it: DeepFool
# from the *predicted* label on **every** test image, unclipped, its failures counted with their partial
# perturbation; DeepFool's success rate is shown next to it. **CIFAR-10 differs:** the reference data of the
# official code were also contrast-normalized and ZCA-whitened by matconvnet, a space we do not reproduce;
# CIFAR-10 ρ values here subtract the per-pixel mean only and are not comparable with the paper's.
#
# **ε_ref** (the book's reading of the paper's FGS protocol, which we could not retrieve) is the median
# $\ell_\infty$ norm of the reference model's DeepFool-$\ell_\infty$ perturbation (`eps_ref_iter` iterations) over
# the correctly classified evaluation images; FGSM is evaluated at 0.2, 0.5 and 1.0 × ε_ref.
#
# **Scale of this run.** The paper fine-tunes for 5 epochs on the full training sets; a Deep Defense step
# costs tens of plain steps (see the cost table), so smaller profiles fine-tune on the first images of the
# training set only. The sentence below is computed from the parameters.

# %%
import matplotlib.pyplot as plt

from robustness.chapters import deep_defense as dd
from robustness.results import StageTimer, load_results, write_results
from robustness.runtime import seed_everything

seed_everything(cfg.seed)
timer = StageTimer()
# `metrics` is deterministic given the parameters and seed; anything measured in seconds goes to `timings`.
metrics = {"models": {}, "eps_ref": {}, "claim_eps": {}, "scale_factors": {}, "anchors": dd.ANCHORS,
           "num_classes": {name: 10 for name, _ in dd.MODELS}}
timings = {"train_seconds": {}, "finetune_seconds_per_epoch": {}}
health, refs, datas = {}, {}, {}
for name, dataset in dd.MODELS:
    with timer(f"reference {name}"):
        datas[name] = dd.data_for(cfg, name, dataset)
        refs[name], meta = dd.reference_model(cfg, name, dataset)
        metrics["eps_ref"][name] = dd.eps_ref(refs[name], datas[name]["eval"].x, datas[name]["eval"].y,
                                              cfg.batch_size, cfg.eps_ref_iter)
        metrics["claim_eps"][name] = dd.claim_eps(cfg, dataset)
        metrics["scale_factors"][name] = dd.scale_factors(datas[name]["eval"].x, dataset)
        timings["train_seconds"][f"{name}/reference"] = meta["train_seconds"]
display(Markdown(dd.setup_table(cfg, datas, metrics)))
display(Markdown(dd.scale_sentence(cfg, datas)))

# %% [markdown]
# ## Fine-tuning, then the evaluation of every variant
#
# Each run goes through the book's one training loop (`robustness.train.cached_train`, the reference model as
# initialization); the three objectives are just losses. After every epoch ρ_adv is recorded on the first
# `n_epoch_eval` test images. Every model, the reference included, is then evaluated the same way: ρ_adv in the
# paper's units, with DeepFool unclipped (the paper's measure) and clipped to $[0,1]$; the box-constrained
# minimum-norm pair (clipped DeepFool and DDN with a convergence check: DDN is rerun with twice the steps);
# FGSM; and the adaptive $\ell_2$ worst case at each radius of `l2_eps_mnist` / `l2_eps_cifar`
# (`robustness.evaluate.worst_case_curve`: per image, the first of PGD-CE, PGD-margin, Square and transfer from
# the plain fine-tuned control that fools it, judged on the model itself).

# %%
models = {}
for name, dataset in dd.MODELS:
    models[name] = {"reference": refs[name]}
    histories = {}
    for variant in dd.VARIANTS[1:]:
        with timer(f"fine-tune {name} {variant}"):
            loss = dd.variant_loss(cfg, variant, metrics["eps_ref"][name], dataset)
            models[name][variant], meta = dd.finetune(cfg, name, dataset, refs[name], datas[name], loss)
        histories[variant] = meta["history"]["epochs"]
        timings["train_seconds"][f"{name}/{variant}"] = meta["train_seconds"]
    with timer(f"evaluate {name}"):
        rows = dd.evaluate_variants(cfg, name, dataset, models[name], datas[name], metrics["eps_ref"][name],
                                    histories)
    metrics["models"][name] = rows
    timings["finetune_seconds_per_epoch"][name] = {v: [e["seconds"] for e in h] for v, h in histories.items()}

# %% [markdown]
# ## Results per model
#
# Every accuracy is shown with its number of images and its 95 % Wilson interval; ρ_adv with an approximate
# 95 % interval of the mean. "ρ_adv, paper units" is the official `test()` number described above; the clipped
# column keeps every DeepFool iterate in $[0,1]$, the box every valid image (and DDN) lives in. The two "median ρ
# px" columns are the like-for-like minimum-norm pair: both box-constrained, pixel ρ, median over the correctly
# classified images with a failure counting as ∞. If DDN's median sits well below the clipped DeepFool's, the
# paper's measure overstates the distance to the boundary.

# %%
for name, dataset in dd.MODELS:
    display(Markdown(f"**{name}** ({dataset}; ε_ref = {metrics['eps_ref'][name]:.3f}; DeepFool's Table 1 ρ_adv for "
                     f"this architecture: {dd.ANCHORS[name]})\n\n" + dd.model_table(metrics, name)))

# %% [markdown]
# **Anchors.** DeepFool's Table 1 gives ρ_adv = 0.20 (LeNet), 0.11 (MLP) and 0.030 (a LeNet-like CIFAR-10
# net) for the matconvnet reference models, with DeepFool run to convergence on matconvnet's inputs. We compare
# our reference models' ρ in the same units (per-pixel mean subtracted) with `eps_ref_iter` DeepFool iterations,
# on MNIST only: the CIFAR-10 anchor lives in matconvnet's contrast-normalized, ZCA-whitened space. What still
# differs on MNIST: our reference models are trained more briefly than the authors' (see the parameters).

# %%
metrics["anchors_comparison"] = dd.anchor_rows(metrics)
display(Markdown(dd.anchor_table(metrics, cfg.eps_ref_iter, cfg.df_iter)))
dd.plot_rho_per_epoch(metrics)
plt.show()

# %% [markdown]
# ## The adaptive worst case
#
# Robust accuracy under the per-image worst case of the ensemble at each $\ell_2$ radius (in $[0,1]$ pixels),
# on the first `n_adaptive` test images, with 95 % Wilson intervals. A radius reuses the examples that fooled an
# image at a smaller one (the smaller ball lies inside the larger), so each curve is non-increasing by
# construction. The last column of the table says which member did the work.

# %%
for name, dataset in dd.MODELS:
    display(Markdown(f"**{name}** ({dataset})\n\n" + dd.worst_case_table(metrics, name)))
dd.plot_worst_case(metrics)
plt.show()

# %% [markdown]
# ## The λ trade-off
#
# Deep Defense on the MLP with the values of `lambda_sweep` (all else fixed). The trade-off the paper's
# objective implies is that a larger λ buys ρ at the price of clean accuracy; the plot shows what this run
# measured (ρ_adv in the paper's units).

# %%
with timer("lambda sweep"):
    metrics["lambda_sweep"] = [
        dd.lambda_sweep_point(cfg, dd.finetune(cfg, "mlp", "mnist", refs["mlp"], datas["mlp"],
                                               dd.variant_loss(cfg, "deep_defense", metrics["eps_ref"]["mlp"],
                                                               "mnist", lam=value))[0], datas["mlp"], value)
        for value in cfg.lambda_sweep]
dd.plot_lambda_sweep(metrics["lambda_sweep"], metrics["models"]["mlp"]["reference"])
plt.show()

# %% [markdown]
# ## Evaluation health
#
# The checklist of {cite}`carlini2019evaluating` on each Deep Defense model, in the threat model of the claim:
# PGD-$\ell_2$ with `health_steps` steps at the radius `pgd_eps_mnist` / `pgd_eps_cifar` on the first `n_health`
# test images, a transfer check from the plain fine-tuned control, and a check that the gradient-free Square
# member found nothing the gradient members missed. A failed check means the attack numbers above may be
# unreliable. Failed checks are shown, never hidden.

# %%
from robustness import report

with timer("health checks"):
    for name, dataset in dd.MODELS:
        worst = dd.worst_at(metrics["models"][name]["deep_defense"], metrics["claim_eps"][name])
        health[name] = dd.health(cfg, models[name]["deep_defense"], models[name][dd.CONTROL], datas[name], dataset,
                                 worst)
        display(Markdown(f"**{name}** (L2 ε = {metrics['claim_eps'][name]:g})\n\n"
                         + report.health_markdown(health[name])))

# %% [markdown]
# ## Cost
#
# Seconds per training step (batch of `cost_batch_size` images, loss + backward + SGD step; median of
# `cost_batches` timed steps after one warm-up) for each objective, timed back to back on this machine in this
# run, then extrapolated to one epoch of the full training set (60,000 / 50,000 images). PGD adversarial
# training is only timed, not trained. Below it, the fine-tuning runs' own seconds per epoch (including the
# per-epoch ρ measurement; a run loaded from the checkpoint cache reports the time it took when it was trained).

# %%
with timer("cost"):
    timings["cost"] = {name: dd.cost_table(cfg, refs[name], datas[name]["ref"], metrics["eps_ref"][name],
                                           metrics["claim_eps"][name]) for name, _ in dd.MODELS}
display(Markdown(dd.cost_markdown(timings)))
display(Markdown(dd.finetune_time_markdown(timings)))

# %% [markdown]
# ## What this reproduction still does differently
#
# - **CIFAR-10 inputs**: matconvnet's contrast normalization and ZCA whitening are not reproduced, so the CIFAR-10
#   ρ values, the meaning of $c$ and $d$ there, and the ConvNet anchor are not the paper's.
# - **Reference models** are the book's, trained briefly, not the authors' matconvnet `.mat` files (not available
#   offline); the anchors' ratio includes this difference.
# - **DeepFool's step** adds $10^{-4}$ to $|f_k|$ where the official code adds $5\cdot10^{-6}$ inside
#   $\|w\|$: a difference far below the step sizes.
# - **Adversarial control**: FGSM fine-tuning at `adv_eps_factor` × ε_ref is the book's control, not the
#   paper's adversarial-training baseline; ε_ref and the FGSM radii are the book's reading of a protocol we could
#   not retrieve.
# - **One training seed**: the intervals cover the sampling of the test images, not the spread over training runs.
#
# ## Results and verdict
#
# Everything above is saved to one JSON file; the verdict below is computed from the numbers read back by
# `robustness.chapters.deep_defense.verdict`. Its rule: Deep Defense's gain is *real* only when its ρ_adv
# interval lies above the control's **and** its worst-case robust accuracy interval lies above the control's at
# some radius; *masked* when only the former holds; *no gain* when the former fails; *broken* when the model is
# near chance. Intervals are compared, never point values.

# %%
path = write_results(cfg, metrics, health, timer, timings)
saved = load_results(cfg.chapter, cfg.profile)
display(Markdown(f"Results: `{path.name}` (profile `{saved['profile']}`).\n\n" + dd.verdict(saved)))
