"""The one training loop and its checkpoint cache."""
import copy
import json
import warnings

import pytest
import torch
from torch import nn

from conftest import TinyNet, make_blobs
from robustness_book.data import ArrayDataset
from robustness_book.train import (CheckpointError, TrainConfig, augment_crop_flip, cached_train, load_checkpoint,
                              save_checkpoint, train)


@pytest.fixture()
def blobs():
    x, y = make_blobs(n=256)
    return ArrayDataset("blobs", "train", x, y, "synthetic")


CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.05, milestones=(2,), seed=1)


def test_training_lowers_the_loss_and_is_reproducible(blobs):
    histories, states = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = TinyNet()
        histories.append(train(model, blobs, CONFIG, device="cpu"))
        states.append(model.state_dict())
    losses = [e["loss"] for e in histories[0]["epochs"]]
    assert losses[-1] < losses[0]
    assert losses == [e["loss"] for e in histories[1]["epochs"]]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_loss_is_a_parameter(blobs):
    calls = []

    def counting_loss(model, x, y):
        calls.append(len(x))
        return nn.functional.cross_entropy(model(x), y)

    train(TinyNet(), blobs, TrainConfig(epochs=1, batch_size=64), loss=counting_loss, device="cpu")
    assert calls == [64, 64, 64, 64]


def test_frozen_batchnorm_keeps_its_statistics(blobs):
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    before = model[2].running_mean.clone()
    train(model, blobs, TrainConfig(epochs=1, batch_size=64, freeze_bn=True), device="cpu")
    assert torch.equal(model[2].running_mean, before)
    train(model, blobs, TrainConfig(epochs=1, batch_size=64), device="cpu")
    assert not torch.equal(model[2].running_mean, before)


def test_augmentation_crops_and_flips_within_the_padded_image():
    x = torch.rand(64, 3, 8, 8)
    out = augment_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    # A zero-offset crop (2, 2) of the padded image is the image itself, possibly flipped.
    same = [(torch.equal(o, i) or torch.equal(o, i.flip(2))) for o, i in zip(out, x)]
    assert 0 < sum(same) < len(x)
    assert out.min() >= 0 and out.max() <= x.max()


def test_checkpoint_round_trip_and_corruption(tmp_path):
    model = TinyNet()
    path = tmp_path / "m.pt"
    digest = save_checkpoint(model, path, {"recipe": {"a": 1}})
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == digest
    other = TinyNet()
    load_checkpoint(other, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(TinyNet(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        save_checkpoint(nn.Linear(2, 2), path, {})
        load_checkpoint(TinyNet(), path)


def test_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": TinyNet()}, path)  # a whole module: needs unpickling code
    from robustness_book._io import sha256_file

    path.with_suffix(".json").write_text(json.dumps({"sha256": sha256_file(path)}))
    with pytest.raises(CheckpointError):
        load_checkpoint(TinyNet(), path)


def test_cache_loads_instead_of_retraining_and_retrains_a_corrupted_file(blobs, tmp_path):
    recipe = {"model": "tiny", "dataset": "blobs"}
    first, meta1 = cached_train(recipe, TinyNet, blobs, CONFIG, device="cpu", cache=tmp_path)
    second, meta2 = cached_train(recipe, TinyNet, blobs, CONFIG, device="cpu", cache=tmp_path)
    assert not meta1["cached"] and meta2["cached"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    # Another recipe (a different loss) is another checkpoint.
    _, meta3 = cached_train(recipe, TinyNet, blobs, TrainConfig(epochs=1, batch_size=32), device="cpu",
                            cache=tmp_path)
    assert not meta3["cached"] and meta3["path"] != meta1["path"]
    # Corrupt the cached file: reported, retrained, never loaded.
    path = tmp_path / meta1["path"].split("/")[-1]
    path.write_bytes(path.read_bytes()[:-10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        third, meta4 = cached_train(recipe, TinyNet, blobs, CONFIG, device="cpu", cache=tmp_path)
    assert not meta4["cached"]
    assert any("corrupted" in str(w.message) for w in caught)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), third.state_dict().values()))


def test_fine_tuning_starts_from_the_given_weights(blobs, tmp_path):
    base, _ = cached_train({"model": "tiny"}, TinyNet, blobs, CONFIG, device="cpu", cache=tmp_path)
    tuned, meta = cached_train({"model": "tiny"}, TinyNet, blobs, TrainConfig(epochs=1, lr=1e-9, seed=5),
                               init=base, device="cpu", cache=tmp_path)
    assert meta["recipe"]["init"] is not None
    for a, b in zip(base.parameters(), tuned.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_onecycle_schedule_warms_up_then_decays_to_zero(blobs):
    from robustness_book.train import _scheduler

    config = TrainConfig(epochs=2, batch_size=32, lr=0.1, schedule="onecycle", warmup=0.25)
    opt = torch.optim.SGD(TinyNet().parameters(), lr=config.lr)
    sched, per_batch = _scheduler(opt, config, steps_per_epoch=8)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert per_batch and lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1)
    peak = lrs.index(max(lrs))
    assert peak == 4 and all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rises for a quarter
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # then falls
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # and ends at 0 after the last step


@pytest.mark.parametrize("options", [dict(precision="bf16"), dict(channels_last=True), dict(nesterov=True)])
def test_speed_options_still_train_reproducibly_and_leave_a_plain_model(blobs, options):
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="onecycle", seed=1, **options)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = TinyNet()
        runs.append((train(model, blobs, config, device="cpu"), model))
    losses = [e["loss"] for e in runs[0][0]["epochs"]]
    assert losses[-1] < losses[0] and losses == [e["loss"] for e in runs[1][0]["epochs"]]
    assert all(p.dtype == torch.float32 for p in runs[0][1].parameters())  # bf16 is autocast only


def test_bad_training_options_fail_naming_them():
    with pytest.raises(ValueError, match="schedule='cosine'"):
        TrainConfig(epochs=1, schedule="cosine")
    with pytest.raises(ValueError, match="precision='fp16'"):
        TrainConfig(epochs=1, precision="fp16")
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        TrainConfig(epochs=1, optimizer="rmsprop")


def test_new_options_at_their_defaults_keep_old_cache_keys():
    key = TrainConfig(epochs=2).key()
    assert "precision" not in key and "schedule" not in key and key["epochs"] == 2
    assert TrainConfig(epochs=2, precision="bf16").key()["precision"] == "bf16"
    assert "optimizer" not in key and TrainConfig(epochs=2, optimizer="adam").key()["optimizer"] == "adam"


def test_adam_option_trains_with_adam(tiny_data):
    # one Adam step from a fixed start equals torch's Adam applied by hand to the same batch gradient
    x, y = tiny_data
    data = ArrayDataset("blobs", "train", x[:64], y[:64], "synthetic")
    config = TrainConfig(epochs=1, batch_size=64, lr=1e-3, optimizer="adam", weight_decay=0.0)
    torch.manual_seed(0)
    model = TinyNet()
    start = copy.deepcopy(model)
    train(model, data, config, device="cpu")
    ref = copy.deepcopy(start)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    torch.manual_seed(config.seed)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(config.seed))
    ref.train()
    nn.functional.cross_entropy(ref(x[:64][order]), y[:64][order]).backward()
    opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    assert "Adam" in config.describe()


def test_seconds_per_step_times_the_loop_on_a_copy_and_counts_its_steps(blobs):
    from robustness_book.train import cross_entropy, seconds_per_step, state_hash

    model = TinyNet()
    before = state_hash(model)
    calls = []

    def counting_loss(net, x, y):
        calls.append(len(x))
        return cross_entropy(net, x, y)

    seconds = seconds_per_step(model, blobs, TrainConfig(epochs=5, batch_size=10), counting_loss, steps=3)
    assert seconds > 0
    assert calls == [10] * 4  # one warm-up step, then the three timed ones, one epoch whatever the recipe says
    assert state_hash(model) == before  # a throw-away copy is trained, not the model
    with pytest.raises(ValueError, match="at least 40"):
        seconds_per_step(model, blobs.first(30), TrainConfig(epochs=1, batch_size=10), steps=4)
