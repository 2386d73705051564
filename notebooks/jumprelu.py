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
# # JumpReLU: a retrofit defense, reproduced and attacked adaptively
#
# Erichson, Yao and Mahoney {cite}`erichson2020jumprelu` propose a defense that needs no retraining: take a
# trained network and replace every ReLU by a *JumpReLU*,
#
# $$\operatorname{JumpReLU}_\kappa(x) = \begin{cases} x & x > \kappa \\ 0 & x \le \kappa \end{cases}$$
#
# so that small activations are cut to zero and the output jumps by $\kappa$ at the threshold ($\kappa = 0$ is
# the ReLU). The claim is a trade: a little clean accuracy for robustness, tuned by one number chosen on
# validation data, for plain and for adversarially trained models alike.
#
# This chapter first repeats the paper's protocol: LeNetLike on the grayscale sets (MNIST, and Fashion-MNIST when
# a reader adds it) and AlexLike on CIFAR-10, each trained plainly ("baseline") and with part of every batch
# replaced by FGSM examples {cite}`goodfellow2015explaining` ("robust"), then retrofitted over a grid of $\kappa$
# and attacked with the paper's attacks: iterative FGSM and DeepFool {cite}`moosavi2016deepfool` in L2 and L∞.
# Each attack runs in the paper's two settings: **gray-box** (examples crafted on the $\kappa = 0$ network, then
# shown to the retrofitted one) and **white-box** (crafted on the retrofitted network, through autograd's
# gradient). We did not implement the paper's trust-region attack; its row in the comparison stays empty.
#
# A discontinuous activation is the textbook case of *shattered gradients* {cite}`athalye2018obfuscated`: the
# gradient autograd returns, $\mathbb 1[x > \kappa]$, never sees the jump, so gradient attacks may overshoot or
# stall near it. The second half therefore attacks every retrofitted model adaptively with the book's shared
# toolkit — PGD {cite}`madry2018towards` with the true gradient, through BPDA surrogates, with a margin loss,
# transferred from $\kappa = 0$, and the gradient-free Square attack — counting an image as robust only if it
# survives all of them, runs the health checks of {cite}`carlini2019evaluating`, and reports AutoAttack as the
# field's reference number. The verdict at the end is computed from those numbers, image by image: the retrofit
# and $\kappa = 0$ on the same images, with an exact McNemar test.
#
# Every number on this page is a record of one results file: which data set and network, which attack and
# radius, which $\kappa$, and the value with its sample size and interval. The banner below lists the run's
# profile and parameters; a parameter that differs per data set (the training length, the $\kappa$ grid, the
# attack subsets) shows one value per data set.

# %% tags=["parameters"]
profile = "auto"  # smoke | laptop | paper | auto (paper on a GPU, else laptop)
datasets = None  # data sets the chapter runs on: mnist, fashion_mnist, cifar10
train_size = None  # training images used (the first N), validation included (per data set)
n_val = None  # of those, the last N: held out (never trained on) to choose kappa (per data set)
epochs = None  # training epochs (per data set)
robust_epochs = None  # training epochs of the robust (FGSM-mixed) network (official: as the baseline) (per data set)
lr = None  # SGD learning rate: the initial one of a step schedule, the peak of a one-cycle one (per data set)
augment = None  # random crops (pad 4) and flips in training (the official code: CIFAR-10 only) (per data set)
adv_ratio = None  # fraction of each batch replaced by FGSM examples (robust model) (per data set)
adv_eps_normalized = None  # robust model's FGSM radius, official normalized units (× σ_c) (per data set)
n_clean = None  # test images for clean accuracy (the first N) (per data set)
n_attack = None  # test (and validation) images attacked with IFGSM (the first N) (per data set)
n_deepfool = None  # test images attacked with DeepFool (the first N) (per data set)
n_adaptive = None  # test images for the adaptive attacks and health checks (the first N) (per data set)
n_autoattack = None  # test images for AutoAttack (standard) at the chosen kappa (0: not run) (per data set)
kappas = None  # kappa grid (must contain 0) (per data set)
budget = None  # largest clean-accuracy drop (fraction) allowed when choosing kappa (per data set)
attack_iter = None  # IFGSM and DeepFool iterations (official: 40 on MNIST, 7 on CIFAR-10) (per data set)
pgd_eps = None  # L∞ radii on [0, 1] pixels of the adaptive attack ensemble; the claim is judged at those on either side of the paper's IFGSM reach (per data set)
ddn_steps = None  # iterations of the min-norm attack (DDN through BPDA; 0: not run) (per data set)
eps = None  # L∞ threat radius on [0, 1] pixels: the worst case per seed, AutoAttack and the health checks (profiles: the data set's standard radius) (per data set)
ifgsm_step = None  # IFGSM step, official normalized units (× σ_c on pixels)
deepfool_classes = None  # DeepFool candidate classes (10: all, as the official code)
members = None  # adaptive-ensemble members in order, pgd_true first: pgd_true, transfer, pgd_bpda, pgd_bpda_margin, pgd_smooth, square
pgd_steps = None  # PGD iterations of every adaptive-ensemble member
restarts = None  # random restarts of the BPDA members and of the transfer source's PGD
square_queries = None  # queries per image of the Square member
smooth_temperature = None  # temperature T of the smooth-surrogate BPDA member
health_steps = None  # PGD steps of the health checks
adaptive_all_kappas = None  # adaptive attacks on every kappa (else on 0, the chosen and the largest)
seeds = None  # attack seeds: the worst case at the threat radius and where the claim is judged is rerun with each; an image is robust only if it survives all
batch_size = None  # attack batch size
seed = None  # random seed of training and of the attacks

# %% tags=["remove-cell"]
from IPython.display import Markdown, display
import matplotlib.pyplot as plt

from robustness_book.chapters import jumprelu as chapter
from robustness_book.config import resolve_notebook
from robustness_book.runtime import seed_everything

cfg = resolve_notebook(chapter.SPEC, globals())
seed_everything(cfg.seed)
run = chapter.Run(cfg)

# %%
display(Markdown(cfg.markdown()))

# %% [markdown]
# ## The four models
#
# The recipe is the official code's: SGD with momentum 0.9, weight decay $5\cdot10^{-4}$, batch 128, the
# learning rate multiplied by 0.2 at a third, two thirds and eight ninths of training, and random crops and
# flips on CIFAR-10 (a profile may turn them off with `augment`). The official code feeds the network
# *normalized* images, $(x-\mu_c)/\sigma_c$ per channel $c$, and every radius and step it uses is in those
# units. Our models normalize inside and take [0, 1] pixels, so a radius $r$ of the official code is
# $r\,\sigma_c$ per channel on pixels: the same attack, not an approximation. The normalization constants are
# those of the official code and live with the data sets' other facts in {mod}`robustness_book.data`.
#
# The **robust** recipe replaces the first `adv_ratio` of every batch by FGSM examples of the current weights,
# crafted in eval mode as the official code does, at the official normalized radius; the table gives each
# network's ratio and radius in both units. Two differences remain and are the book's: the official robust
# AlexLike trains 120 epochs (milestones 30/60/90) where we use the baseline's schedule, and the official loader
# drops the last partial batch where ours keeps it.
#
# The last `n_val` of the first `train_size` training images are held out *before* training (no network trains
# on them); they are the only data used to choose $\kappa$. Weights are cached under a hash of the whole recipe, so a second run loads them. The table
# reports clean test accuracy with its 95% Wilson interval and, when the profile shortens training, how much of
# the official schedule this run used.

# %%
with run.timer("train"):
    chapter.train_all(run)
display(Markdown(chapter.training_table(run.results())))

# %% [markdown]
# ## Choosing κ on validation data
#
# For every model and every $\kappa$ of the paper's grid we measure, on the held-out validation images, clean
# accuracy (all of them) and white-box IFGSM accuracy (the first `n_attack`). The rule, stated before looking at
# test data: among the $\kappa$ whose clean accuracy is at most `budget` below that of $\kappa = 0$, take the one
# with the highest IFGSM accuracy (ties go to the smaller $\kappa$). Like the paper, this rule rewards whatever
# raises IFGSM accuracy, masking included; the adaptive half of the chapter checks what it picked.

# %%
with run.timer("kappa on validation"):
    chapter.choose_all(run)
display(Markdown(chapter.choice_table(run.results())))

# %% [markdown]
# ## The paper's protocol on the test set
#
# Every $\kappa$ of the grid, every model, both settings. IFGSM takes unprojected sign-gradient steps of
# `ifgsm_step` *in normalized units* on the images it has not fooled yet, for `attack_iter` iterations (the
# official code runs 40 on MNIST and 7 on CIFAR-10); on pixels that is $\sigma_c$ times the step, and the note
# below converts this run's budget. DeepFool runs the same number of iterations.
#
# The relative perturbation $\rho = \|r\|_p / \|x\|_p$ is reported two ways. **ρ (paper units)** is the official
# code's: measured on normalized images, $\|r/\sigma\|_p / \|(x-\mu)/\sigma\|_p$, and averaged the way its
# evaluation averages it, over every attacked image; only this one may be compared with the paper's numbers.
# **ρ (pixels)** is the book's: the mean over the correctly classified images DeepFool fools, on [0, 1] pixels.
# The two differ because subtracting the mean changes the denominator. In the gray-box setting the DeepFool
# perturbation is the one found on the $\kappa = 0$ network, so its size is fixed and the question is how often
# it still fools the retrofitted network ("DF acc").

# %%
with run.timer("paper protocol"):
    chapter.protocol_all(run)
display(Markdown(chapter.deepfool_note(run.results())))
display(Markdown(chapter.protocol_tables(run.results())))

# %% [markdown]
# The trade-off, per model. The top row is what the paper's claim rests on: if the retrofit works as claimed,
# IFGSM accuracy (squares) climbs with $\kappa$ while clean accuracy (circles) stays nearly flat, up to the
# $\kappa$ chosen on validation (dotted red line). The bottom row is DeepFool's white-box perturbation in paper
# units: a rising curve says the boundary looks farther away *to DeepFool*, which follows the same gradient.

# %% mystnb={"figure": {"caption": "The paper's trade-off per model: clean and IFGSM accuracy (top) and DeepFool's white-box relative perturbation in paper units (bottom) against κ on test images; the dotted red line marks the κ chosen on validation.", "name": "fig-jumprelu-tradeoff"}}
chapter.plot_tradeoff(run.results())
plt.show()

# %% [markdown]
# ### Against the paper's one public row
#
# Only one row of the paper's tables is public, quoted in the official repository's issue tracker: CIFAR-10
# AlexLike, "JumpReLU (Base)", white-box — clean accuracy, IFGSM accuracy and, in brackets, three numbers for
# DeepFool L∞, DeepFool L2 and the trust-region attack, which we read as relative perturbations in the official
# code's normalized units. The paper does not say which $\kappa$ that row used. The table puts each published
# number (read from the chapter's anchors file) beside our closest measurement: the CIFAR-10 baseline at its
# chosen $\kappa$, in the same units. Its scale is the profile's, so a gap in clean accuracy is expected
# wherever training was shortened.

# %%
display(Markdown(chapter.paper_comparison_table(run.results())))

# %% [markdown]
# ## Beyond the paper: an adaptive attack ensemble
#
# Following {cite}`athalye2018obfuscated` and {cite}`carlini2019evaluating`, each retrofitted model faces the
# book's worst-case ensemble ({mod}`robustness_book.evaluate`), and an image counts as robust only if it survives
# **all** members; each member attacks only the images the earlier ones left standing, so the table reports
# how many images each one *added*:
#
# - **pgd_true** — PGD with autograd's own gradient of the JumpReLU network: the paper's white-box gradient, now
#   bounded by $\varepsilon$ and run to convergence. It runs first, so its column is its stand-alone result and
#   the verdict compares like with like;
# - **transfer** — PGD examples crafted on the $\kappa = 0$ network at full strength;
# - **pgd_bpda**, **pgd_bpda_margin** — PGD through the BPDA copy (exact JumpReLU forward, ReLU backward), with
#   cross-entropy and with the margin loss of Carlini and Wagner (no saturated-softmax blind spot);
# - **pgd_smooth** — PGD through a BPDA copy whose backward is that of $x\,\sigma((x-\kappa)/T)$, which sees the
#   jump;
# - **square** — the gradient-free Square attack {cite}`andriushchenko2020square`: it needs no gradient, so if it
#   fools images the gradient members missed, the gradients were masked.
#
# PGD keeps, per image, the first iterate that fools it and reruns restarts only on the images still standing.
# At $\kappa = 0$ BPDA's gradient is exact and the transfer source is the network itself, so only pgd_true,
# the margin loss and Square run. An image fooled at a smaller $\varepsilon$ stays fooled at a larger one (the
# smaller ball lies inside), so the worst case can only fall as $\varepsilon$ grows; the largest radius is there
# to check that it falls toward zero. The curve also measures the radii on either side of the paper's IFGSM
# reach (its `attack_iter` steps of `ifgsm_step` × σ, computed by `chapter.ifgsm_reach`), where the verdict
# judges the claim (`chapter.paper_radii`); there, and at the threat radius `eps` (by default the data set's
# standard one), the worst case is rerun with each attack seed of `seeds`, and an image counts as robust only
# if it survived every seed. Every accuracy has its 95% Wilson interval.

# %%
with run.timer("adaptive"):
    chapter.adaptive_all(run)
display(Markdown(chapter.worst_case_table(run.results())))

# %% [markdown]
# The same worst case as curves. Read each panel left to right: at $\varepsilon = 0$ the curve starts at clean
# accuracy, and a sound evaluation drives every curve toward the dotted chance line at the largest radius. A
# retrofit that truly moved the boundary would keep its curve above the $\kappa = 0$ curve, with bands that do
# not overlap; curves that fall onto the $\kappa = 0$ one say the gain the paper's attacks saw is gone.

# %% mystnb={"figure": {"caption": "Adaptive worst-case accuracy against the L∞ radius ε for each attacked κ, one panel per model, with 95% Wilson bands; ε = 0 is clean accuracy and the dotted line is chance.", "name": "fig-jumprelu-worst-case"}}
chapter.plot_worst_case(run.results())
plt.show()

# %% [markdown]
# ### How far is the boundary? An adaptive minimum-norm attack
#
# The paper's headline measure is DeepFool's relative perturbation. DeepFool follows the retrofit's own
# gradient; DDN {cite}`rony2019decoupling` through the BPDA copy looks for the smallest L2 perturbation without
# that blind spot, clipped to [0, 1] like every attack here. Its median $\rho$ (pixels) is reported with a
# convergence check: doubling DDN's steps must move the median by less than 2%, or the table says it did not
# converge. A DDN median well below DeepFool's mean at the same $\kappa$ means DeepFool overestimated the
# distance to the boundary.

# %%
display(Markdown(chapter.min_norm_table(run.results())))

# %% [markdown]
# ### AutoAttack, the field's reference number
#
# AutoAttack {cite}`croce2020reliable` (standard version: APGD-CE, APGD-T, FAB-T, Square) at the threat radius
# on the model at its chosen $\kappa$. It follows the retrofit's true gradient and adds Square, so it is a
# reference point, not an adaptive attack: the table sets it beside the book's worst case (every attack seed) on
# the same images, image by image; where it leaves more standing than the ensemble, the gap is what adaptivity
# bought. It runs a second time as the verdict's confirmation: on the images the adaptive worst case left
# standing, at each radius where the verdict judges, wherever the retrofit is right on more of those images than
# $\kappa = 0$; a gain AutoAttack removes is not counted. AutoAttack's reliability flags are listed below the
# tables.

# %%
with run.timer("autoattack"):
    chapter.autoattack_all(run)
display(Markdown(chapter.autoattack_table(run.results())))

# %% [markdown]
# ### Evaluation health of each retrofitted model
#
# The checks of {cite}`carlini2019evaluating` for every model at its judged $\kappa$ and at the largest
# $\kappa$ of the grid, at the threat radius. Attacks follow the BPDA copy; gradients are measured on the exact
# retrofit (where JumpReLU's shattered gradients live); the transfer check uses PGD examples of the
# $\kappa = 0$ network; the gradient-free check reads what Square added in the worst case above; and a
# near-constant classifier is flagged as broken, not robust.

# %%
with run.timer("health checks"):
    chapter.health_all(run)
display(Markdown(chapter.health_tables(run.results())))

# %% [markdown]
# ## Interactive: κ and one adversarial example
#
# For the first model: clean and white-box IFGSM accuracy at each $\kappa$ of the grid, and the IFGSM example
# of the first test image at that $\kappa$. In a live notebook the slider below the figure browses the same
# precomputed results; the website shows the static strip.

# %% mystnb={"figure": {"caption": "The white-box IFGSM example of the first test image at each κ of the grid for the first model, titled with that κ's clean and IFGSM accuracy and the true and predicted class.", "name": "fig-jumprelu-kappa-strip"}}
strip = chapter.kappa_examples_for(run)
chapter.kappa_strip(**strip)
plt.show()

# %% tags=["remove-cell", "skip-execution"]
# Live notebooks only: the book's runner does not execute widget cells (an interact slider can hang papermill).
chapter.kappa_slider(**strip);

# %% tags=["remove-cell"]
saved = run.saved()

# %% [markdown]
# ## Results and verdict
#
# Everything above is saved to one results file; the verdict below is computed from the file as read back, by
# {func}`robustness_book.chapters.jumprelu.verdict`. Every comparison is of the retrofit and $\kappa = 0$ on the
# *same images*, image by image (exact McNemar test, Newcombe interval of the gain, Holm across the networks and
# radii). Per model it first asks whether the paper's own measurement (white-box IFGSM) reproduces, then judges the
# claim: the adaptive worst case, every attack seed, at the measured radii on either side of the paper's IFGSM
# reach (`paper_radii`: where the paper made its claim, well inside the threat radius), confirmed by
# AutoAttack on its survivors, with the threat-radius result reported beside it. The claim **holds** (at one of
# those radii), **does not hold** (the gain's interval excludes the smallest gain that matters, or the paper's
# attack showed a gain that a stronger attack removed on the same images: the retrofit's worst case significantly
# below its own IFGSM accuracy and not significantly above $\kappa = 0$'s), or is **inconclusive**, naming why:
# the floor ($\kappa = 0$ at 0% there, so no gain can show), too few images (where even a perfectly one-sided
# result on `n_adaptive` images could not show the smallest gain that matters, the verdict says the data set
# cannot carry the claim at this scale), a failed health check, or a broken network (near chance, or
# near-constant). The member that removed a gain is named: a BPDA, transfer or gradient-free member is evidence
# of masked gradients; `pgd_true`, the paper's own gradient run longer, says the paper's attack was short.

# %%
display(Markdown(chapter.verdict(saved)))
