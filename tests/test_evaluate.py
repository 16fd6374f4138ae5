"""kNN (DINO protocol) against a naive reference, the linear probe, and the knn/linear CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from training.__main__ import main
from training.evaluate import knn_classify, linear_probe
from zoo.backbones import build_encoder


def naive_knn(train, ytr, test, k, t, num_classes):
    train = train / train.norm(dim=1, keepdim=True)
    test = test / test.norm(dim=1, keepdim=True)
    preds = []
    for x in test:
        sims = [(float(x @ y), i) for i, y in enumerate(train)]
        sims.sort(reverse=True)
        votes = [0.0] * num_classes
        for s, i in sims[:k]:
            votes[int(ytr[i])] += float(np.exp(s / t))
        preds.append(sorted(range(num_classes), key=lambda c: -votes[c])[:5])
    return preds


def test_weighted_knn_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(200, 16, generator=g), torch.randn(50, 16, generator=g)
    ytr, yte = torch.randint(0, 7, (200,), generator=g), torch.randint(0, 7, (50,), generator=g)
    preds = naive_knn(train, ytr, test, 20, 0.07, 7)
    top1 = sum(p[0] == int(y) for p, y in zip(preds, yte)) / 50
    top5 = sum(int(y) in p for p, y in zip(preds, yte)) / 50
    r = knn_classify(train, ytr, test, yte, k=20, temperature=0.07, num_classes=7, chunk=16)
    assert r.top1 == pytest.approx(top1) and r.top5 == pytest.approx(top5)


def test_knn_and_linear_find_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=g) * 4
    ytr, yte = torch.arange(500) % 5, torch.arange(100) % 5
    xtr = centres[ytr] + torch.randn(500, 32, generator=g)
    xte = centres[yte] + torch.randn(100, 32, generator=g)
    assert knn_classify(xtr, ytr, xte, yte).top1 > 0.95
    r = linear_probe(xtr, ytr, xte, yte, epochs=20)
    assert r.top1 > 0.95 and r.top5 == 1.0


def test_knn_rejects_k_zero():
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.randn(2, 2),
                     torch.zeros(2, dtype=torch.long), k=0)


@pytest.fixture
def labelled_folder(tmp_path):
    g = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    for name, c in colours.items():
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(12):
            px = np.clip(np.array(c) + g.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(tmp_path / "imgs" / name / f"{i}.png")
    return tmp_path / "imgs"


@pytest.mark.parametrize("command,extra", [("knn", ["-k", "5"]), ("linear", ["--epochs", "5"])])
def test_eval_cli_prints_json_last(tmp_path, capsys, labelled_folder, command, extra):
    zoo.save_encoder(build_encoder("resnet18_cifar", image_size=16), tmp_path / "m")
    code = main([command, "--model", str(tmp_path / "m"), "--data", str(labelled_folder), "--test-data",
                 str(labelled_folder), "--json", "--no-progress", "--device", "cpu", *extra])
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= last["top1"] <= last["top5"] <= 1.0 and last["n_test"] == 24


def test_eval_cli_unknown_model_is_one_line(capsys):
    assert main(["knn", "--model", "no/such/folder", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_record_writes_the_result_and_command_into_the_folder(tmp_path, capsys, labelled_folder):
    zoo.save_encoder(build_encoder("resnet18_cifar", image_size=16), tmp_path / "m")
    assert main(["knn", "--model", str(tmp_path / "m"), "--data", str(labelled_folder), "--test-data",
                 str(labelled_folder), "--record", "--json", "--no-progress", "-k", "3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ev = zoo.read_config(tmp_path / "m")["zoo"]["eval"]
    assert ev["knn_top1"]["value"] == pytest.approx(100 * printed["top1"])
    assert ev["knn_top1"]["command"].startswith("python -m training knn --model ") and ev["knn_top5"]["k"] == 3
