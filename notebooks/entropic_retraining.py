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
# # Entropic retraining: mimicking adversarial training without adversarial examples
#
# Adversarial training {cite}`madry2018towards` is the defense that has held up best, and it is expensive: every
# training step first runs an attack. Sperl and Böttinger {cite}`sperl2020optimizing` propose a shortcut they call
# *entropic retraining*. An analysis "inspired by information theory" shows what adversarial training does to a
# network; a new training objective then reproduces that effect with an extra loss term computed on the clean
# training images alone, with no adversarial example ever generated. Their abstract claims a significant gain in
# robustness "for various NN architectures and data sets" at a fraction of adversarial training's cost.
#
# **The one number that can be checked.** The first author submitted a CIFAR-10 model trained this way to the
# AutoAttack leaderboard {cite}`croce2020reliable`: a small CNN (convolutions 32-32, max-pooling, 64-64,
# max-pooling, then dense layers 512-256-128-128-84-10). Its numbers are printed below the parameters, read from
# the book's anchors file. The chapter trains its own network with PGD adversarial training as the yardstick those
# numbers are read against; reaching the yardstick from clean images alone would be remarkable.
#
# **What is the paper's, and what is the book's.** The method section could not be read, and no code was
# published. This chapter tests *the book's reading of an unpublished method*, and says so wherever it matters.
#
# - The paper's (abstract and the AutoAttack submissions): training uses clean data only, with "an adapted loss
#   function" whose "additional loss-term is based on information theoretic inspired metrics"; it is meant to
#   mimic adversarial training; the CIFAR-10 architecture and its three numbers.
# - The book's, in two readings, each tested and named in every sentence of the verdict. In both the loss is
#   cross-entropy plus λ times a term on $H_l$, the entropy of the activations of layer $l$ on the training batch.
#   A layer's entropy is the mean, over its units, of each unit's entropy across the batch, estimated with a soft
#   histogram (`bins` bins, 16 in every profile, spanning the unit's range in the batch; in nats), computed in
#   float32 from the activations of the bfloat16 training pass.
#   *Reading A* pulls each layer toward a target, $\sum_l (H_l - H_l^\star)^2$, where $H_l^\star$ is the entropy
#   the same layer has in an adversarially trained network; its layers are those whose entropy adversarial training
#   moved most, among the `layer_candidates` (the dense layers in every profile: the authors' earlier work analyses
#   dense-layer activations). It needs an adversarially trained network, which the paper's defining claim ("no
#   generation of adversarial examples") rules out. *Reading B* is free of that: it moves the entropy of every
#   candidate layer in one fixed direction, $-\sum_l d\, H_l$ with $d = -1$ to lower it or $+1$ to raise it (the
#   profile table below shows which way adversarial training moved each layer, per data set), the direction among
#   `free_directions` and λ chosen on held-out images. No adversarial example enters reading B anywhere. "Retraining" is fine-tuning the
#   normally trained network in both. The network is initialized as Keras
#   does it, since the authors' model was (we infer) a Keras model. The kernel sizes and paddings are the book's
#   too (see {func}`robustness_book.models.entropic_cnn`). The loss and the estimators are in
#   {mod}`robustness_book.defenses.entropic`.
#
# **Beyond the paper.** A robustness gain from a loss term that never sees an attack is exactly where gradient
# masking hides {cite}`athalye2018obfuscated`. So every gain is audited: the book's stronger ensemble, with a
# targeted attack on a margin-type loss {cite}`carlini2017towards`, which does not saturate, and the gradient-free
# Square attack {cite}`andriushchenko2020square`; examples transferred from the normally trained network; a count of the test
# images whose softmax saturates in float32; and the health checks of {cite}`carlini2019evaluating`. The control
# is the same fine-tuning without the entropic term. λ and the layers are chosen on held-out training images,
# never on the test images.

# %% tags=["parameters"]
profile = "auto"  # smoke | laptop | paper | auto (paper on a GPU, else laptop)
datasets = None  # data sets the chapter runs on
model = None  # architecture (robustness_book.models) per data set (per data set)
eps = None  # L∞ threat radius (adversarial training, lambda selection, worst case, AutoAttack, health checks) (per data set)
train_size = None  # training images of the normal model (the first N) (per data set)
epochs = None  # epochs of normal training (and of adversarial training from scratch) (per data set)
lr = None  # peak one-cycle learning rate of normal training (and of adversarial training from scratch) (per data set)
n_val = None  # held-out training images after the first train_size (layers and lambda are chosen on them) (per data set)
ft_size = None  # training images of every fine-tuning (the first N) (per data set)
ft_epochs = None  # epochs of every fine-tuning (plain, entropic, adversarial) (per data set)
ft_lr = None  # peak one-cycle learning rate of every fine-tuning (per data set)
at_from = None  # adversarial training: fine-tune the normal model (normal) or train from new weights (scratch)
at_steps = None  # PGD steps of adversarial training (at the threat radius) (per data set)
at_mix = None  # weight of the PGD examples in adversarial training, at most 1 (0.5 is half clean and half adversarial cross-entropy, 1 adversarial only)
estimator = None  # entropy estimator of the profiles and of the loss
bins = None  # histogram bins of the entropy estimator (at least 2)
entropy_batches = None  # held-out batches of batch_size images each profile is averaged over
layer_candidates = None  # activation layers the entropic loss may act on
n_layers = None  # candidate layers reading A's loss acts on: those whose held-out entropy adversarial training moved most
free_directions = None  # directions reading B (AT-free) may move the entropy of every candidate layer in; chosen with lambda on held-out images
lams = None  # lambda values of the sweep of each reading (0 is plain fine-tuning, the control)
clean_budget = None  # largest held-out clean-accuracy loss the chosen lambda may cost (per data set)
n_select = None  # held-out images lambda is chosen on (clean and PGD accuracy) (per data set)
select_steps = None  # PGD steps when choosing lambda
n_test = None  # test images for clean accuracy (the first N) (per data set)
n_adaptive = None  # test images for PGD, the worst case, saturation and the health checks (the first N) (per data set)
n_autoattack = None  # AutoAttack on the worst case's survivors among its first N images, for the entropic models and adversarial training (0: not run) (per data set)
pgd_steps = None  # steps of the gradient members of the worst case (PGD-CE first, then the book's ensemble)
restarts = None  # random restarts of the gradient members
square_queries = None  # queries per image of the Square member
health_steps = None  # PGD steps of the health checks
cost_steps = None  # training steps timed per objective for the cost table
batch_size = None  # training batch (the loss and the profiles estimate entropies on batches of this size)
eval_batch_size = None  # attack and evaluation batch size
seed = None  # random seed

# %% tags=["remove-cell"]
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from robustness_book.chapters import entropic_retraining as chapter
from robustness_book.config import resolve_notebook
from robustness_book.runtime import seed_everything

cfg = resolve_notebook(chapter.SPEC, globals())
seed_everything(cfg.seed)
run = chapter.Run(cfg)

# %% tags=["remove-input"]
display(Markdown(cfg.markdown()))

# %% [markdown]
# The authors' own numbers, the anchor this chapter measures against:

# %% tags=["remove-input"]
display(Markdown(chapter.anchor_summary()))

# %% [markdown]
# ## Two reference networks
#
# Every model in this chapter has the architecture of the authors' submission, on CIFAR-10 and, as a second
# data set, on MNIST (the same layers on 28×28 grayscale images). The *normal* network is trained with plain
# cross-entropy on the first `train_size` training images; the `n_val` images after them are held out, and
# they alone are used to measure entropy profiles and to choose the layers and λ.
#
# The *adversarially trained* network is the yardstick the method imitates. With `at_from = "normal"` (the
# laptop profile) it is the normal network fine-tuned with PGD examples at the threat radius, on the same images
# and for as long as every other fine-tuning below, its loss weighing clean and adversarial cross-entropy half
# and half (`at_mix`); with `"scratch"` (the paper profile) it is trained on PGD examples alone from new weights,
# as Madry et al. do. A short fine-tuning need not make a robust network, so the yardstick is not taken on trust:
# the verdict checks that it is clearly more robust than the normal network on the same test images, and prints
# "no yardstick" otherwise.

# %%
chapter.train_references(run)
display(Markdown(chapter.training_table(run.results())))

# %% [markdown]
# ## What adversarial training does to the entropy profile
#
# The analysis the method rests on: how much information each layer's activations keep. For each activation
# (ReLU) layer we estimate its entropy on a batch of held-out images, the same way the loss will estimate it on
# a training batch: same estimator, same batch size (a histogram's entropy depends on how many samples fill it).
# The profile is the mean over `entropy_batches` such batches; the spread over the batches shows how precisely it
# is known. Then, among the `layer_candidates` layers, the `n_layers` whose entropy adversarial training moved
# most become the loss's layers, and the adversarially trained network's entropies there become its targets.

# %%
chapter.profiles_all(run)
display(Markdown(chapter.profile_table(run.results())))

# %% [markdown]
# The figure answers the analysis question: which layers change, and in which direction? A layer where the two
# profiles coincide has nothing to imitate; the shaded layers are those the loss will act on.

# %% mystnb={"figure": {"caption": "Mean unit entropy (nats) of each activation layer on held-out images, for the normally and the adversarially trained network (bars: standard deviation over the held-out batches). Shaded: the layers the entropic loss acts on.", "name": "fig-entropic-profiles"}}
chapter.profile_figure(run.results())
plt.show()

# %% [markdown]
# ## Entropic retraining
#
# Each λ of the sweep fine-tunes the normal network on clean training images with the entropic loss, once per
# reading (reading B once per direction of `free_directions`); λ = 0 is plain fine-tuning, the control both
# readings share, which sees the same images for as long. On held-out images we then measure each model's clean
# accuracy, its accuracy under PGD on the cross-entropy (the attack a paper would report) and, for reading A, its
# distance to the target profile, for reading B how far it moved its layers' entropy. The rule, per reading, fixed
# before any test image is seen: among the λ that cost at most `clean_budget` of held-out clean accuracy against
# λ = 0, the one with the best held-out PGD accuracy; ties go to the smaller λ, so plain fine-tuning wins unless
# the entropic term helps. Reading B's direction is the one whose λ does best under PGD there.

# %%
chapter.sweep_all(run)
display(Markdown(chapter.sweep_table(run.results())))

# %% [markdown]
# If the loss does its job, the distance to the targets shrinks as λ grows. Whether robustness follows is the
# question the right-hand panels start to answer, on held-out images.

# %% mystnb={"figure": {"caption": "Left: held-out entropy profiles of the normal, the adversarially trained and every reading-A network. Middle: root-mean-square distance to reading A's targets over its layers against λ (dotted: the normal network). Right: held-out clean and PGD-CE accuracy against λ for both readings; the dashed line marks reading A's chosen λ, a dotted one the λ it tested when validation kept 0.", "name": "fig-entropic-sweep"}}
chapter.sweep_figure(run.results())
plt.show()

# %% [markdown]
# ## Robustness on the test images
#
# Five networks face one threat model, L∞ at the radius `eps`, by default the data set's standard one (0.3 on
# MNIST, 8/255 on CIFAR-10): the normal one, plain fine-tuning, the entropic model of each reading and adversarial
# training. Each reading's entropic model is the one at its chosen λ or, when validation kept λ = 0, the one at the
# largest λ within the clean budget, the strongest entropic term the budget allows: a claim that fails on held-out
# images is still measured on the test images. Clean accuracy is measured on the first `n_test` test images;
# everything else on the first `n_adaptive`. PGD on the cross-entropy, the paper's own kind of attack, is the
# first member of the worst case and is also reported alone; the worst case then adds the book's default ensemble
# of stronger attacks (`evaluate.default_members`, gradient-free Square among them) and, for every network but the
# normal one, PGD examples crafted on the normal network and transferred. An image counts as robust only if it
# survives them all. AutoAttack {cite}`croce2020reliable`, the measurement behind the anchor, then attacks the
# images the worst case left standing (among the first `n_autoattack`, the same images for every network), on each
# entropic model and on adversarial training, the networks the verdict could call more robust than the normal
# one, so that the yardstick is measured like what it measures: an image counts as robust only if both left it
# standing, and AutoAttack's own reliability flags are shown in the verdict.
#
# Two columns belong to the audit. When the largest softmax probability rounds to exactly 1 in float32, the
# cross-entropy is 0 and its gradient is made of the other, tiny probabilities; when those underflow too, the
# gradient is exactly 0 and PGD on the cross-entropy has nothing to follow. A loss term that inflates the logits
# would show up here, and the ensemble's margin-type attack would then find what PGD-CE misses.

# %%
chapter.evaluate_all(run)
chapter.autoattack_all(run)
display(Markdown(chapter.worst_case_table(run.results())))

# %% mystnb={"figure": {"caption": "Test accuracy of each network: clean, under PGD on the cross-entropy, under the book's worst case (PGD-CE, the default ensemble, transfer from the normal network) and, for the entropic models and adversarial training, under AutoAttack on the survivors; bars are 95% Wilson intervals.", "name": "fig-entropic-evaluation"}}
chapter.evaluation_figure(run.results())
plt.show()

# %% [markdown]
# ## Evaluation health
#
# The checklist of {cite}`carlini2019evaluating` on each reading's entropic model (reading A's is plain
# fine-tuning when no λ > 0 is within the clean budget) at the threat radius: the attack at radius zero gives clean accuracy, accuracy never
# rises with the radius and reaches chance at a very large one, more steps barely help, the iterative attack is
# no weaker than FGSM, input gradients are not zero, the gradient-free attack adds almost nothing to the gradient
# ones, and examples transferred from the normal network fool less often than white-box ones. A failed row is
# shown, never hidden.

# %%
chapter.health_all(run)
display(Markdown(chapter.health_tables(run.results())))

# %% [markdown]
# ## What it costs
#
# The method's selling point is its price. Whole training runs are a poor clock when models come from a cache, so
# we time `cost_steps` training steps of each objective back to back on one batch, with the fine-tuning recipe:
# plain cross-entropy, the entropic loss of each reading and PGD adversarial training. Each recipe's cost is then
# its number of steps times the seconds per step, as a ratio to normal training. Note what reading A's row leaves
# out: its targets come from an adversarially trained network, which has to exist first. Reading B's row is all it
# costs.

# %%
chapter.cost_all(run)
display(Markdown(chapter.cost_table(run.results())))

# %% tags=["remove-cell"]
saved = run.saved()  # the results file, with the tested networks for other chapters to score, read back

# %% [markdown]
# ## The anchor
#
# The authors' self-reported CIFAR-10 numbers beside this run's entropic models and its adversarially trained
# yardstick, AutoAttack on the same images for each. Their training recipe, λ and layers are unknown, and the
# laptop profile trains briefly on a CPU, so the comparison is one of orders of magnitude: does anything like the
# authors' AutoAttack number appear, or does the robust accuracy stay near that of the plain network?

# %%
display(Markdown(chapter.anchor_table(saved)))

# %% [markdown]
# ## Verdict
#
# Everything above is one results file; the verdict is computed from it as read back, by
# {func}`robustness_book.chapters.entropic_retraining.verdict`. Per data set it judges one claim per reading, entropic
# retraining (at the tested λ) is more robust than the normal network, and checks the yardstick, adversarial
# training against the normal network, all on the same test images: the worst case's per-image outcomes, an exact
# McNemar test on the images only one network gets right, Holm-adjusted across the readings and data sets. Where
# the yardstick holds, each reading is graded by the fraction of adversarial training's gain it recovers on the
# same images, with its 95% interval (Fieller's, for a ratio), and its AutoAttack accuracy is set beside the
# authors' number from the anchors file; where it does not, the verdict says "no yardstick" and grades nothing.
# Each outcome is *holds*, *does not
# hold* (the paired interval excludes the smallest gain that would matter) or *inconclusive* with its reason: at
# the floor (the normal network is at 0% at the threat radius, the radius of the paper's claim; the chapter measures
# no smaller one), too few images, an unhealthy evaluation or a broken network. A positive must also survive
# AutoAttack on the survivors and the gating health checks. "Masked gradients" is said only with evidence: a gain
# that PGD-CE alone showed over the normal network, and the worst case clearly below PGD-CE alone on the same
# images, naming the member that removed the gain. Plain
# fine-tuning is set beside each reading as a paired number, with what the method cost in clean accuracy and in
# training time. A model evaluated with a clean accuracy near chance is called broken, and its
# robustness is not interpreted; the verdict ends with the rule.

# %%
display(Markdown(chapter.verdict(saved)))
