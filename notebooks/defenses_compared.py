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
# # The defenses side by side: one network, one evaluation, their cost
#
# Each earlier chapter tests one paper on the networks that paper used, against the baselines and attacks that paper
# chose. A reader therefore cannot yet answer the question the book's title raises: which of these defenses buys the
# most robustness, at what cost, measured the same way? No public leaderboard answers it either: RobustBench
# {cite}`croce2020reliable` lists none of the five papers. This chapter applies every defense of the book to *one*
# network per data set, evaluates all of them with *one* protocol on the *same* test images, and puts their
# training cost beside their robustness.
#
# **One network.** The model zoo's LeNetLike on MNIST and AlexLike on CIFAR-10 (`robustness_book.zoo`), the
# laptop networks several chapters already share; its undefended copy is the baseline. Where a defense's own
# chapter applies it to another architecture (Deep Defense to the paper's MLP, LeNet and ConvNet; entropic
# retraining to the authors' ten-layer CNN), the table of hyperparameters says so, and this chapter uses the zoo
# network anyway: the point is one network.
#
# **Every defense as its chapter applies it**, with the hyperparameter its chapter chose on held-out data read from
# that chapter's results file of the same profile, never typed in: the JumpReLU retrofit (κ)
# {cite}`erichson2020jumprelu`, compress/amplify rescaling of the first layer's channels (strength)
# {cite}`pravin2021fragile`, Deep Defense fine-tuning (λ) {cite}`yan2018deep`, entropic retraining in both of the
# book's readings (λ, and reading B's direction) {cite}`sperl2020optimizing`, and superimposition training (λ)
# {cite}`seiler2020enhancing`. Two references come from outside the papers: PGD adversarial training
# {cite}`madry2018towards` and its cheap single-step cousin, FGSM with a random start {cite}`wong2020fast`.
# A missing results file gives a labelled default and the command that makes it.
#
# The run's profile and every parameter value are in the box below.

# %% tags=["parameters"]
profile = "auto"  # smoke | laptop | paper | auto (paper on a GPU, else laptop)
datasets = None  # data sets the chapter runs on (each with its zoo network)
defenses = None  # defenses applied to the zoo network (pgd_at is required)
eps = None  # L∞ threat radius on [0, 1] pixels (per data set)
linf_radii = None  # fractions of the threat radius of the L∞ worst-case curve (must contain 1)
l2_eps = None  # L2 radius of the L2 worst case, on [0, 1] pixels (per data set)
defense_train_size = None  # training images of the defenses trained from scratch (the first N) (per data set)
defense_epochs = None  # epochs of the defenses trained from scratch (per data set)
at_steps = None  # PGD steps of PGD adversarial training (per data set)
at_mix = None  # share of PGD examples in adversarial training's loss (1 is Madry et al.)
ft_size = None  # training images of the fine-tunings (the first N) (per data set)
ft_epochs = None  # epochs of the fine-tunings (per data set)
ft_lr = None  # learning rate of the fine-tunings
n_val = None  # held-out training images (after the baseline's) for compress/amplify's fragility scores and entropic reading A's targets (per data set)
jumprelu_kappa = None  # JumpReLU κ when the JumpReLU chapter's results hold no choice (a labelled default; set by hand, it replaces that choice) (per data set)
rescale_strength = None  # compress/amplify strength when the fragile-neurons chapter's results hold no choice (labelled default; set by hand, it replaces it) (per data set)
dd_lam = None  # Deep Defense λ when the deep_defense chapter's results hold none (labelled default; set by hand, it replaces it) (per data set)
entropic_lam = None  # entropic λ (both readings) when the entropic chapter's results hold none (labelled default; set by hand, it replaces it) (per data set)
superimposition_lam = None  # superimposition λ when the transferable-adversaries chapter's results hold none (labelled default; set by hand, it replaces it) (per data set)
n_test = None  # test images for clean accuracy and the adversary set (the first N) (per data set)
n_adaptive = None  # test images of the worst cases, DDN and the health checks (the first N) (per data set)
pgd_steps = None  # steps of the worst case's gradient members
restarts = None  # restarts of the worst case's gradient members
square_queries = None  # queries per image of the Square member
ddn_steps = None  # DDN steps of the minimum-norm attack
health_steps = None  # PGD steps of the health checks
autoattack = None  # run AutoAttack (standard) on the worst case's survivors
cost_batches = None  # training steps timed per recipe for the seconds column
cost_batch_size = None  # batch size of the counted and timed training steps
batch_size = None  # attack batch size
seed = None  # random seed of the attacks and of the adversarial training

# %% tags=["remove-cell"]
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from robustness_book.chapters import defenses_compared as chapter
from robustness_book.config import resolve_notebook
from robustness_book.runtime import seed_everything

cfg = resolve_notebook(chapter.SPEC, globals())
seed_everything(cfg.seed)
run = chapter.Run(cfg)

# %% tags=["remove-input"]
display(Markdown(cfg.markdown()))

# %% [markdown]
# ## The networks
#
# The baseline is the zoo network, loaded from the checkpoint cache the other chapters fill. Each defense is then
# applied to it in one of three ways. The two *retrofits* change a trained network without training: JumpReLU
# replaces every ReLU by a jump of height κ, and compress/amplify rescales the first layer's channels by their
# clean fragility, measured on `n_val` held-out training images the baseline never saw. The three *fine-tunings*
# continue training the baseline with the defense's loss on the first `ft_size` training images for `ft_epochs`
# epochs: Deep Defense's DeepFool-perturbation regularizer, and entropic retraining. Reading A pulls the entropy of
# the layers that adversarial training changed most toward the adversarially trained network's (this chapter's
# own PGD-trained network, measured on the held-out images); reading B lowers or raises it in the direction its
# chapter's validation kept, with no adversarial example anywhere. The three trainings *from scratch* use the zoo's
# recipe on `defense_train_size` images for `defense_epochs` epochs: superimposition training, PGD adversarial
# training at the threat radius (`at_steps` steps, `at_mix` of the loss on PGD examples; 1 is Madry et al.'s
# objective) and FGSM with a random start (a uniform start in the ε-ball, one step of 1.25·ε, Wong et al.'s
# recipe).

# %%
chapter.build_defenses(run)
display(Markdown(chapter.settings_table(run.results())))

# %% [markdown]
# Every network's clean accuracy on the first `n_test` test images, with its 95% Wilson interval, and its
# training time (a checkpoint loaded from the cache says so):

# %%
display(Markdown(chapter.training_table(run.results())))

# %% [markdown]
# ## What each defense costs
#
# Seconds depend on the machine, so the cost is first counted: the forward and backward passes per training image
# of one training step of each recipe, counted with hooks on the network's output during one real step (an
# attack's input gradient counts as a backward pass; normal training is one of each). PGD-k adversarial training
# costs k + 2 forward and k + 1 backward passes (the book's PGD also judges its last iterate), FGSM with a random start 2, superimposition 2 (two forward branches, neither detached),
# entropic retraining 1 (the entropies come from the same forward pass), Deep Defense one per unrolled DeepFool
# step and class gradient. The whole recipe's passes relative to normal training of the baseline multiply these by
# its images and epochs; a fine-tuning adds them to the baseline's own training, and a retrofit adds no training
# pass at all (choosing its κ or strength costs forward passes on held-out images, in the other chapter, not
# counted here). The seconds per step, measured on this machine, stand beside.

# %%
chapter.cost_all(run)
display(Markdown(chapter.cost_table(run.results())))

# %% [markdown]
# ## One evaluation for all
#
# Every network meets the same attacks on the same images (the first `n_adaptive` test images): the toolkit's
# worst case, APGD-CE, APGD-T and Square, each member attacking only the images the earlier ones left standing,
# as a nested curve over the L∞ radii `linf_radii` × the threat radius; for the JumpReLU retrofit also PGD through
# its BPDA copy, since the jump has no useful gradient. The first member alone is recorded as well: what a
# single-attack evaluation would report. The same ensemble runs at the L2 radius `l2_eps`, and DDN measures the
# minimum L2 perturbation per image (ρ = ‖δ‖/‖x‖, median over the correctly classified images, an image DDN
# does not fool counted as infinitely far). The transferable-adversaries chapter's adversary set, crafted on
# other networks from the same test images, gives the black-box number. Every network gets the health checks of
# Carlini et al. {cite}`carlini2019evaluating` at the threat radius.

# %%
chapter.evaluate_all(run)
chapter.confirm_all(run)

# %% [markdown]
# What was missing, each with the command that makes it (a defense then runs at its labelled default, and a
# missing adversary set leaves its column empty):

# %%
display(Markdown(chapter.notes_markdown(run.results())))

# %% [markdown]
# ## The table
#
# One row per network, RobustBench-style: clean accuracy, the single attack, AutoAttack on the worst case's
# survivors and the best known (the worst case), all at the threat radius with their 95% intervals, then the L2
# worst case, DDN's median ρ, the adversary set, AutoAttack's reliability flags, the relative cost and the outcome
# of the comparison with the baseline from the verdict below.

# %%
display(Markdown(chapter.robustbench_table(run.results())))

# %% [markdown]
# Robust accuracy against the radius, every network on one plot per data set. The dashed line is the judged
# radius: the largest radius where the baseline's worst case is off the floor, so that a gain over it can show.

# %% mystnb={"figure": {"caption": "Worst-case robust accuracy against the L∞ radius, every defense on the same network and images.", "name": "fig-compared-curves"}}
chapter.curve_figure(run.results())
plt.show()

# %% [markdown]
# Robustness against cost: each network a point, robust accuracy at the judged radius against its training
# passes relative to normal training, the Pareto front dashed. A defense off the front is beaten on both axes.

# %% mystnb={"figure": {"caption": "Robust accuracy at the judged radius against the training passes relative to normal training; the dashed line is the Pareto front.", "name": "fig-compared-cost"}}
chapter.cost_figure(run.results())
plt.show()

# %% [markdown]
# ## Evaluation health
#
# The checks of each network at the threat radius; a failed row is shown, never hidden, and a failed gating check
# makes a positive outcome inconclusive.

# %%
display(Markdown(chapter.health_tables(run.results())))

# %% tags=["remove-cell"]
saved = run.saved()

# %% [markdown]
# ## Results and verdict
#
# Computed from the results file as read back ({func}`robustness_book.chapters.defenses_compared.verdict`). Per
# data set and defense two claims, each paired on the same images (exact McNemar test, Newcombe interval, Holm over
# the defenses and data sets): *more robust than the baseline*, at the baseline's judged radius, and *more robust
# than PGD adversarial training*, at the largest radius where adversarial training is off the floor. Each ends in
# one of three outcomes: holds, does not hold, or inconclusive with its reason (at the floor, too few images, an
# unhealthy evaluation, a broken network, a reduced scale). A positive must survive AutoAttack on the worst case's
# survivors, and a failed health check makes it inconclusive.

# %%
display(Markdown(chapter.verdict(saved)))
