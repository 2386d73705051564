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
# # Threat model and attacks on an undefended model
#
# Every later chapter asks whether a defense makes a network harder to fool. That question only has an
# answer once two things are fixed: *what the attacker may do* (the threat model), and *how strong our attacks
# are* against a model that has no defense at all. This chapter fixes both. It trains an ordinary classifier
# (by default the LeNetLike network of the JumpReLU paper {cite}`erichson2020jumprelu` on MNIST; Fashion-MNIST
# and CIFAR-10 are one parameter away), attacks it with every attack the book uses, and checks that the attacks
# behave as attacks should. The numbers it produces are the baseline every defense is compared against.
#
# **The threat model.** Images live in $[0, 1]^{C\times H\times W}$. Normalization is a layer inside the model,
# so every attack works on raw pixels and clips its result to $[0, 1]$. The attacker knows the weights
# (white-box) and may change each image by a perturbation $\delta$ with $\|\delta\|_\infty \le \varepsilon$.
# The radius $\varepsilon$ is the data set's standard one, from `robustness_book.data.threat_eps`: the radius of
# {cite}`madry2018towards` for MNIST and CIFAR-10, a common choice for Fashion-MNIST. The model is *robust* at
# an image if no allowed $\delta$ changes its label; robust accuracy is the fraction of test images where that
# holds. An attack can only show that a $\delta$ exists, so every robust accuracy an attack reports is an
# upper bound; the stronger the attack, the tighter the bound.
#
# **Two kinds of attack.** *Radius attacks* get a budget $\varepsilon$ and look for a label change inside
# it; they answer "how accurate is the model at this $\varepsilon$". *Minimum-norm attacks* get no budget and
# look for the smallest $\delta$ that changes the label; they answer "how far is the decision boundary",
# which is how DeepFool {cite}`moosavi2016deepfool` and Deep Defense {cite}`yan2018deep` report robustness.
#
# The run's profile and every parameter value are in the box below; rerun this page with other values as
# described in [Running the book](../running.md).

# %% tags=["parameters"]
profile = "auto"  # smoke | laptop | paper | auto (paper on a GPU, else laptop)
dataset = None  # data set: mnist, fashion_mnist, cifar10
model = None  # architecture from robustness_book.models: lenet_like, alex_like, mlp, lenet, convnet, resnet20
train_size = None  # training images used (the first N)
epochs = None  # training epochs
lr = None  # SGD learning rate
n_clean = None  # test images for clean accuracy (the first N)
n_attack = None  # test images attacked (the first N)
eps = None  # L∞ threat-model radius on [0, 1] pixels
eps_grid_linf = None  # L∞ radii for the accuracy curves
eps_grid_l2 = None  # L2 radii for the accuracy curves
pgd_steps = None  # PGD iterations
restarts = None  # PGD random restarts (worst case kept per image)
deepfool_iter = None  # DeepFool maximum iterations
ddn_steps = None  # DDN (minimum-norm L2 attack) iterations
square_queries = None  # queries per image of the Square member of the adaptive worst case
batch_size = None  # attack batch size
seed = None  # random seed

# %% tags=["remove-cell"]
from IPython.display import Markdown, display

from robustness_book.chapters import baselines as chapter
from robustness_book.config import resolve_notebook
from robustness_book.results import load_results, overrides_of
from robustness_book.runtime import seed_everything

cfg = resolve_notebook(chapter.SPEC, globals())
seed_everything(cfg.seed)
run = chapter.Run(cfg)

# %% tags=["remove-input"]
display(Markdown(cfg.markdown()))

# %% [markdown]
# ## The model
#
# The network is trained with one recipe, `robustness_book.chapters.baselines.train_recipe`, the recipe of the
# JumpReLU code: plain cross-entropy, SGD with momentum and weight decay, and a learning rate cut by a constant
# factor at a third, two thirds and eight ninths of training, for the number of epochs the profile sets
# (CIFAR-10 adds random crops and flips). The same function serves the attack benchmark
# (`python -m robustness_book bench`), so both always measure the same model. Trained weights are cached under a
# hash of the whole recipe: rerunning the page does not retrain. Clean accuracy is measured on the first
# `n_clean` test images and reported with its 95% Wilson interval, as every accuracy the book judges is (the attack
# curves below show points; their intervals are in the results file).

# %%
chapter.train(run)
display(Markdown(chapter.clean_summary(run.results())))

# %% [markdown]
# ## Accuracy under attack as $\varepsilon$ grows
#
# The attacks with a budget, each run on the first `n_attack` test images:
#
# FGSM {cite}`goodfellow2015explaining`
# : one step of size $\varepsilon$ along the sign of the loss gradient. Cheap, and a lower bar: it assumes the
# loss is linear around the image.
#
# PGD {cite}`madry2018towards`
# : the iterated version: from a random point in the ball, `pgd_steps` steps of size $2.5\,\varepsilon$ divided
# by the number of steps, each followed by a projection back onto the $\varepsilon$-ball and the pixel box; with
# `restarts` random starts the worst one per image is kept. In $\ell_\infty$ a step follows the sign of the
# gradient; in $\ell_2$ the gradient divided by its norm.
#
# Each curve is measured at the radii of the profile's grid. The headline number, PGD in $\ell_\infty$ at the
# threat radius itself, is measured separately and stored as its own record, whether or not that radius lies
# on the grid: the verdict reads it directly instead of searching the curve for a matching radius.

# %%
chapter.attack_curves(run)
chapter.threat_radius(run)

# %% [markdown]
# What to look for in the figure: every curve starts at the clean accuracy of the attacked images (a radius of
# zero changes nothing) and falls as the radius grows. PGD must lie on or below FGSM everywhere: PGD can do
# everything FGSM does, so a PGD curve above FGSM's would mean our PGD is broken, not that the model is robust.
# An undefended model typically falls to near the dotted chance line well before the threat radius (red dashed
# line); the red star is the headline measurement. The $\ell_2$ panel shows the same model against a budget on
# the Euclidean size of the perturbation instead of the largest pixel change.

# %% mystnb={"figure": {"caption": "Accuracy of the undefended model against the attack radius, for FGSM and PGD in L∞ (left) and PGD in L2 (right); the dotted line is chance, the red dashed line the threat radius and the red star PGD measured exactly there. Lower curves are stronger attacks.", "name": "fig-baselines-curves"}}
chapter.curves_figure(run.results())

# %% [markdown]
# The same curves as numbers, one row per attack and one column per radius (accuracy of the attacked images):

# %%
display(Markdown(chapter.curves_table(run.results(), "linf") + "\n\n" + chapter.curves_table(run.results(), "l2")))

# %% [markdown]
# ## What the adversarial examples look like
#
# The first attacked images under PGD in $\ell_\infty$ at the threat radius, exactly the examples the headline
# number counts. Top row: the clean image, with its true label and the model's prediction; middle row: the
# adversarial image and the new prediction; bottom row: the perturbation, amplified so that its largest
# change spans the gray range. At the standard radius the digit (or garment, or object) is still plainly
# recognizable to a person, which is what makes the label change a failure of the model.

# %% mystnb={"figure": {"caption": "Clean images (true label and prediction), their PGD-L∞ adversarial versions at the threat radius (new prediction) and the amplified perturbations.", "name": "fig-baselines-examples"}}
chapter.examples_figure(run)

# %% [markdown]
# ## How far is the decision boundary? Minimum-norm attacks
#
# DeepFool {cite}`moosavi2016deepfool` linearizes the network around the current point, steps to the nearest
# linearized decision boundary, and repeats until the label changes (at most `deepfool_iter` times), in
# $\ell_2$ or in $\ell_\infty$. It stops at the first boundary it crosses, which can over-estimate the
# distance. DDN {cite}`rony2019decoupling` instead keeps an adversarial example and shrinks its $\ell_2$ norm
# for a fixed budget of `ddn_steps` steps; we run it a second time with twice the steps, and if the median
# moves by more than a small fraction, DDN has not converged and its numbers are upper bounds on the distance.
#
# Over the correctly classified images, each attack reports how often it changes the label, and the relative
# size $\rho = \|r\|/\|x\|$ of the perturbation $r$ in pixels: its median (an image the attack did not fool
# counts as $\infty$) and its mean over the fooled images, as DeepFool and Deep Defense define it. DDN's
# $\rho$ should be no larger than DeepFool's $\ell_2$ one; a much larger DeepFool $\rho$ means DeepFool
# over-states the robustness of this model.

# %%
chapter.min_norm_attacks(run)
display(Markdown(chapter.min_norm_table(run.results())))

# %% [markdown]
# ## The adaptive worst case
#
# A single attack can fail on an image where another succeeds. Every later chapter therefore reports an
# adaptive worst case, `robustness_book.evaluate.worst_case`: per image, APGD on the cross-entropy, then targeted
# APGD on the DLR loss (a margin loss divided by the spread of the logits, which neither saturates on confident
# images nor depends on their scale) {cite}`croce2020reliable`, then the gradient-free Square attack
# {cite}`andriushchenko2020square`, each run only on the images the earlier ones left standing. An image counts as robust only if it survives all three, and each example is checked against
# the threat model before it counts. On an undefended model the later members should add almost nothing: PGD
# alone already finds the examples. The table shows the headline next to the worst case, the worst case's first
# member alone (what a single APGD-CE reports on the same images) and AutoAttack (standard) run on the images the
# worst case left standing, each with its 95% interval and, in the results file, its per-image outcome. Where
# the worst case is at 0% (or 100%) at the threat radius, no paired comparison can show there: the worst case
# is then also run at the radius of the PGD curve below the threat radius where PGD's accuracy is nearest 50%, and
# shown in a second table.

# %%
chapter.worst_case(run)
display(Markdown(chapter.worst_case_table(run.results())))

# %% [markdown]
# ## Evaluation health
#
# A low robust accuracy is only convincing if the attack that measured it works. The checklist of
# {cite}`carlini2019evaluating`, run on this model, tests exactly that; an evaluation that fails one of these
# checks is more likely measuring a broken attack than a robust model, and failed checks are shown, never
# hidden:
#
# - a radius of zero must give the clean accuracy, and accuracy must never rise as the radius grows;
# - at a very large radius accuracy must reach chance (that ball contains a uniform gray image);
# - the iterative attack must do at least as well as the single-step one, and doubling its steps must barely
#   change the result (otherwise it has not converged);
# - the input gradients must be non-zero (a zero gradient blinds every gradient attack) and the classifier
#   must not be near-constant;
# - the gradient-free Square attack must find almost nothing the gradient attacks missed (otherwise the
#   gradients are probably masked);
# - examples crafted on a second copy of the network, trained from another seed, must fool ours less often
#   than white-box ones (transfer is a weaker attack than having the weights).

# %%
chapter.evaluation_health(run)
display(Markdown(chapter.health_tables(run.results())))

# %% [markdown]
# ## What each attack costs
#
# Wall-clock time to attack the first `n_attack` test images on this run's device, the radius attacks at the
# threat radius. These seconds depend on the machine, so they are kept apart from the results records, which
# are identical between two runs with the same parameters and seed.

# %%
chapter.attack_cost(run)
display(Markdown(chapter.cost_table(run.results())))

# %% [markdown]
# ## Results and verdict
#
# Every number above is saved as a record in one results file. The verdict below is computed from that file as
# read back, by `robustness_book.chapters.baselines.verdict`, with the book's three outcomes (holds, does not hold,
# inconclusive with its reason). Claim 1, *the undefended model is not robust*: the strongest robust accuracy
# measured at the threat radius (AutoAttack on the worst case's survivors) has its whole interval below a
# threshold named in the chapter module, unless the model is broken by the book's rule (stated in the verdict,
# and read on the interval of the clean accuracy, never its point value). Claim 2, *the adaptive worst case finds
# more than PGD alone*: an exact McNemar test of the same images under the worst case's first member alone and
# under the whole worst case, with the smallest gain that matters named in the module; it is judged at the threat
# radius unless the worst case is at the floor there (then at that smaller radius, the threat-radius outcome
# reported beside it), failed gradient-free, transfer, step-doubling or chance checks make a positive
# inconclusive, and the member that fooled PGD alone's survivors is named only when the test shows they were
# fooled. The verdict then reads the health rows and AutoAttack's flags, and compares the minimum-norm attacks
# with each other, reading DDN's convergence as `robustness_book.evaluate.min_norm` decided it.

# %% tags=["remove-cell"]
run.save()

# %%
saved = load_results(cfg.chapter, cfg.profile, overrides_of(cfg))
display(Markdown(chapter.verdict(saved)))
