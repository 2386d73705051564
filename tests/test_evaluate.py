"""robustness.evaluate: the evaluation-health table on the tiny blobs model."""
import copy

import pytest
import torch

from robustness import attacks, evaluate


def test_health_checks_on_an_undefended_model(tiny_model, tiny_data):
    x, y = tiny_data[0][:120], tiny_data[1][:120]
    rows = evaluate.health_checks(tiny_model, x, y, eps=0.2, steps=10, num_classes=4, batch_size=64)
    by_name = {r["check"]: r for r in rows}
    # an undefended ReLU net: the sanity checks Carlini et al. ask for must all hold
    assert by_name["eps = 0 gives clean accuracy"]["passed"]
    assert by_name["accuracy never rises with eps"]["passed"]
    assert by_name["near chance at eps = 0.5"]["passed"]
    assert by_name["PGD-10 no better for the model than FGSM"]["passed"]
    # a BPDA copy whose backward is exact computes the same table
    same = attacks.with_bpda(tiny_model, {})
    assert evaluate.health_checks(tiny_model, x, y, eps=0.2, steps=10, num_classes=4, batch_size=64,
                                  attack_model=same) == rows


def test_health_checks_refuse_an_attack_model_that_computes_another_function(tiny_model, tiny_data):
    x, y = tiny_data[0][:50], tiny_data[1][:50]
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.net[-1].bias += torch.tensor([1e4, 0, 0, 0])  # predicts class 0 everywhere
    with pytest.raises(ValueError, match="same function"):
        evaluate.health_checks(tiny_model, x, y, eps=0.2, steps=5, num_classes=4, attack_model=other)
