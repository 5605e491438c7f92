"""The model that ships with the project (``models/pretrained``): it loads, its config validates, the
folder fits the size limit and carries its card, and a fine-tune starts from its weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipelines.cli.env import pretrained_path
from pipelines.training.card import SHIP_LIMIT_BYTES
from pipelines.training.optim import EMA, TrainStep, make_optimizer
from pipelines.training.scenes import SampleStream, SceneMix
from pipelines.training.worker import start_from
from sas_model.checkpoint import load_meta, load_model
from sas_model.config import ModelConfig
from sas_model.model import SASModel

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "pretrained"


def test_shipped_model_loads_validates_fits_the_limit_and_has_its_card(monkeypatch):
    monkeypatch.delenv("SAS_PRETRAINED_MODEL", raising=False)
    assert pretrained_path().resolve() == SHIPPED  # what --init pretrained and the fallbacks load
    cfg = ModelConfig.load(SHIPPED / "config.json").validate()
    model = load_model(SHIPPED, device="cpu")
    assert model.cfg.to_dict() == cfg.to_dict() and cfg.order.enabled
    meta = load_meta(SHIPPED)
    assert meta["samples_seen"] > 0 and model.num_parameters() == meta["num_parameters"]
    size = sum(f.stat().st_size for f in SHIPPED.iterdir() if f.is_file())
    assert size <= SHIP_LIMIT_BYTES
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    assert f"{meta['samples_seen']:,}" in card and "| pair order, every edge |" in card
    curve = [json.loads(line) for line in (SHIPPED / "curve.jsonl").read_text().splitlines()]
    assert curve and curve[-1]["samples"] >= meta["samples_seen"] - meta["pretrain"]["batch_size"]
    assert (SHIPPED / "examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fine_tune_starts_from_the_shipped_weights(monkeypatch):
    """The first loss of a run started with ``--init pretrained`` equals the shipped model's on that batch."""
    monkeypatch.delenv("SAS_PRETRAINED_MODEL", raising=False)
    shipped = load_model(SHIPPED, device="cpu").train()
    cfg = shipped.cfg
    batch = SampleStream(7, SceneMix.parse("flat", cfg.image_size), completion=True).batch(8)

    def first_loss(model: SASModel, ema: EMA) -> float:
        step = TrainStep(model, make_optimizer(model, 1e-3, 0.0), ema, torch.device("cpu"), "fp32", 1.0)
        torch.manual_seed(0)  # the same diffusion times and noise for both
        return float(step(batch, lr=1e-3).loss)

    torch.manual_seed(123)
    fresh = SASModel(cfg).train()
    fresh_ema = EMA(fresh, 0.999)
    assert "models/pretrained" in start_from("pretrained", fresh, fresh_ema)
    expected = first_loss(shipped, EMA(shipped, 0.999))
    assert abs(first_loss(fresh, fresh_ema) - expected) < 1e-6 * max(1.0, abs(expected))

    torch.manual_seed(123)
    scratch = SASModel(cfg).train()
    assert abs(first_loss(scratch, EMA(scratch, 0.999)) - expected) > 1e-3  # the comparison can fail
