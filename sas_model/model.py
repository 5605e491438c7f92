"""``SASModel``: the conditional mask-diffusion model (UNet + noise schedule + loss).

``forward`` returns ``(loss, logs)`` so DDP can wrap the whole model; samplers and the segmenter
use ``condition`` once per layer and ``predict_x0`` once per denoising step.
"""

from __future__ import annotations

import torch
from torch import nn

from sas_model.config import ModelConfig
from sas_model.diffusion import diffusion_loss, foreground_loss, sample_timesteps, x0_from_output
from sas_model.occlusion import CUE_CHANNELS, OcclusionCues, cue_loss, cue_targets
from sas_model.order import LayerOrderHead, decode_visible_layers, order_loss
from sas_model.schedules import NoiseSchedule
from sas_model.unet import UNet


def normalise_image(image: torch.Tensor) -> torch.Tensor:
    """``uint8 [B,H,W,3]`` / ``[B,3,H,W]`` → float ``[B,3,H,W]`` in [-1, 1].

    Float input is taken as already normalised to [-1, 1] (only the layout is fixed).
    """
    if image.ndim != 4 or 3 not in (image.shape[1], image.shape[-1]):
        raise ValueError(f"image must be [B,H,W,3] or [B,3,H,W], got shape {tuple(image.shape)}")
    if image.shape[1] != 3:
        image = image.permute(0, 3, 1, 2)
    if image.dtype == torch.uint8:
        return image.float() / 127.5 - 1.0
    return image.float()


def mask_to_unit(mask: torch.Tensor) -> torch.Tensor:
    """Mask ``[B,H,W]`` (bool or 0/1, soft values allowed) → float ``[B,1,H,W]`` in [-1, 1]."""
    return mask.float().clamp(0, 1).unsqueeze(1) * 2 - 1


class SASModel(nn.Module):
    """Denoises the layer mask ``M_k`` given the image and the cumulative mask ``C_k``.

    UNet input channels: RGB (3) + ``C_k`` (1) [+ the occlusion cues (3) when ``cues.enabled``] +
    ``x_t`` (1) [+ previous x0 estimate (1) when ``unet.self_condition``]; output: 1 channel interpreted
    per ``diffusion.prediction_type`` [+ the auxiliary foreground logits (1) when
    ``diffusion.foreground_weight > 0``, used by the loss only].

    The occlusion cues (``sas_model/occlusion.py``) depend on the image and ``C_k`` only, so they are
    computed once per layer in :meth:`condition`, not once per denoising step.

    With ``order.enabled`` the model has two parts: the order head (``sas_model/order.py``), one pass
    from the image to the visible-layer map ``V`` (which gives every ``C_k = {V < k}`` and layer 0),
    and the diffusion UNet, which then *completes* layer k: it reads one more clean channel, the
    visible part of layer k (``{V = k}``), and denoises the layer's **hidden part** ``M_k ∩ C_k``
    (what lies under the layers in front); the layer is the visible part plus that. Only samples with
    k >= 1 and a non-empty ``M_k`` train the UNet (layer 0 has no hidden part; the terminal sample
    has nothing left), every sample trains the order head.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.schedule = NoiseSchedule(cfg.diffusion)
        self.self_condition = cfg.unet.self_condition
        self.foreground_head = cfg.diffusion.foreground_weight > 0
        self.cues = OcclusionCues(cfg.cues) if cfg.cues.enabled else None
        self.order = LayerOrderHead(cfg) if cfg.order.enabled else None
        self.unet = UNet(
            cfg.unet,
            cfg.image_size,
            in_channels=5
            + int(self.self_condition)
            + (CUE_CHANNELS if self.cues is not None else 0)
            + int(self.order is not None),
            out_channels=1 + int(self.foreground_head),
        )

    @property
    def mask_scale(self) -> float:
        return self.cfg.diffusion.mask_scale

    @property
    def deterministic(self) -> bool:
        return self.cfg.diffusion.mode == "deterministic"

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def condition(
        self, image: torch.Tensor, cumulative_mask: torch.Tensor, visible: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Clean conditioning channels ``[B,4(+3)(+1),H,W]``: RGB in [-1,1], ``C_k`` in {-1,1} (0 if
        ablated), with ``cues.enabled`` the occlusion cues in [-1,1], and with ``order.enabled`` the
        visible part of layer k, ``visible [B,H,W]`` (bool or 0/1), in {-1,1}."""
        base = self.base_condition(image, cumulative_mask)
        parts = [base]
        if self.cues is not None:
            parts.append(self.cues(base).channels().to(base.dtype))
        if self.order is not None:
            if visible is None:
                raise ValueError(
                    "this model completes layers from the order map: pass visible= (the layer's visible part)"
                )
            parts.append(mask_to_unit(visible.to(base.device)).to(base.dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else base

    def visible_layers(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The order head's map: ``(V long[B,H,W], p float[B,K+1,H,W])`` for ``image`` uint8
        ``[B,H,W,3]`` (see :func:`sas_model.order.decode_visible_layers`: V = -1 on the background)."""
        if self.order is None:
            raise ValueError("this model has no order head (order.enabled is false)")
        rgb = normalise_image(image.to(self.schedule.betas.device))
        return decode_visible_layers(self.order(rgb).logits)

    def base_condition(self, image: torch.Tensor, cumulative_mask: torch.Tensor) -> torch.Tensor:
        """RGB in [-1,1] and ``C_k`` in {-1,1} (0 if ablated): ``[B,4,H,W]``."""
        device = self.schedule.betas.device
        rgb = normalise_image(image.to(device))
        cmask = mask_to_unit(cumulative_mask.to(device))
        if not self.cfg.diffusion.use_cumulative_mask:
            cmask = torch.zeros_like(cmask)
        if rgb.shape[-2:] != cmask.shape[-2:]:
            raise ValueError(
                f"image {tuple(rgb.shape[-2:])} and cumulative mask {tuple(cmask.shape[-2:])} differ in size"
            )
        return torch.cat([rgb, cmask], dim=1)

    def model_output(
        self, cond: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw UNet output ``[B,1,H,W]`` for ``cond [B,4,H,W]``, ``x_t [B,1,H,W]``, ``t long[B]``."""
        return self.outputs(cond, x_t, t, self_cond)[:, :1]

    def outputs(
        self, cond: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Every output channel ``[B,1 (+1 foreground logits),H,W]``; ``model_output`` is the first."""
        if self.deterministic:  # the baseline: no noisy input, a constant timestep
            x_t = torch.zeros_like(x_t)
            t = torch.full_like(t, self.cfg.diffusion.num_timesteps - 1)
        parts = [cond, x_t.to(cond.dtype)]
        if self.self_condition:
            parts.append(torch.zeros_like(x_t) if self_cond is None or self.deterministic else self_cond)
        return self.unet(torch.cat(parts, dim=1), t)

    def predict_x0(
        self, cond: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Clean-mask estimate ``[B,1,H,W]`` in ``[-s, s]`` (what every sampler consumes)."""
        output = self.model_output(cond, x_t, t, self_cond)
        return x0_from_output(self.schedule, self.cfg.diffusion, output.float(), x_t.float(), t)

    def forward(
        self,
        image: torch.Tensor,
        cumulative_mask: torch.Tensor,
        layer_mask: torch.Tensor,
        foreground: torch.Tensor | None = None,
        occlusion: torch.Tensor | None = None,
        layer_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss for a batch of layer samples.

        ``image`` uint8 ``[B,H,W,3]`` or ``[B,3,H,W]``; ``cumulative_mask``, ``layer_mask`` and
        ``foreground`` (every object of the scene, ``C_L``; needed when the foreground head is on)
        ``[B,H,W]`` (bool or 0/1); ``occlusion`` int8 ``[B,3,H,W]`` (the scenes' occlusion maps) and
        ``layer_index`` long ``[B]`` (k), needed when ``cues.enabled``. Returns ``(loss scalar,
        {"loss", "mse", "bce", "dice", "foreground"[, "cues", "cue/<term>"]} floats)``.
        """
        cfg = self.cfg.diffusion
        if self.foreground_head and foreground is None:
            raise ValueError(
                "this config trains a foreground head (diffusion.foreground_weight > 0): pass foreground= "
                "(the scene's union of all object masks), or set diffusion.foreground_weight=0"
            )
        if (self.cues is not None or self.order is not None) and (occlusion is None or layer_index is None):
            raise ValueError(
                "this config trains the occlusion-cue module or the order head: pass occlusion= (the "
                "scenes' occlusion maps) and layer_index=, or set cues.enabled=false and order.enabled=false"
            )
        total = torch.zeros((), device=self.schedule.betas.device)
        logs: dict[str, float] = {}
        visible = None
        if self.order is not None:
            order_total, order_logs = self._order_loss(image, occlusion)
            total = total + self.cfg.order.weight * order_total
            logs.update(order_logs)
            # the UNet completes layers k >= 1: condition on their visible part, denoise the hidden one
            rows = (layer_index.to(layer_mask.device) >= 1) & layer_mask.flatten(1).bool().any(dim=1)
            row_weight = 1.0
            if not bool(rows.any()):  # keep every parameter in the graph (DDP) at zero weight
                rows[0], row_weight = True, 0.0
            image, cumulative_mask, layer_mask = image[rows], cumulative_mask[rows], layer_mask[rows]
            occlusion, layer_index = occlusion[rows], layer_index[rows]
            foreground = foreground[rows] if foreground is not None else None
            cmask, lmask = cumulative_mask.bool(), layer_mask.bool()
            visible, layer_mask = lmask & ~cmask, lmask & cmask
        cond = self.base_condition(image, cumulative_mask)
        cue_terms: dict[str, torch.Tensor] = {}
        if self.cues is not None:
            cues = self.cues(cond)
            targets = cue_targets(occlusion.to(cond.device), layer_index.to(cond.device))
            cue_terms = cue_loss(cues, targets, junction_weight=self.cfg.cues.junction_weight)
            cond = torch.cat([cond, cues.channels().to(cond.dtype)], dim=1)
        if visible is not None:
            cond = torch.cat([cond, mask_to_unit(visible.to(cond.device)).to(cond.dtype)], dim=1)
        x0 = mask_to_unit(layer_mask.to(cond.device)) * cfg.mask_scale
        t = sample_timesteps(cfg, x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = self.schedule.q_sample(x0, t, noise)
        self_cond = None
        if self.self_condition and not self.deterministic and torch.rand(()) < cfg.self_cond_prob:
            with torch.no_grad():  # Chen et al. 2022 ("Analog Bits"): condition on our own estimate
                self_cond = self.predict_x0(cond, x_t, t).to(cond.dtype).detach()
        output = self.outputs(cond, x_t, t, self_cond)
        terms = diffusion_loss(self.schedule, cfg, output[:, :1], x0, x_t, t, noise)
        if self.foreground_head:
            fg = foreground_loss(output[:, 1:2], foreground.to(cond.device).float().unsqueeze(1))
            terms = terms._replace(total=terms.total + cfg.foreground_weight * fg, foreground=fg)
        diffusion_total = terms.total
        logs.update({name: float(value.detach()) for name, value in terms._asdict().items()})
        if cue_terms:
            cue_total = sum(cue_terms.values())
            diffusion_total = diffusion_total + self.cfg.cues.weight * cue_total
            logs["cues"] = float(cue_total.detach())
            logs.update({f"cue/{name}": float(value.detach()) for name, value in cue_terms.items()})
        if self.order is not None:
            diffusion_total = diffusion_total * row_weight
        total = total + diffusion_total
        logs.pop("total")
        logs["loss"] = float(total.detach())
        return total, logs

    def _order_loss(
        self, image: torch.Tensor, occlusion: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The order head's loss on every sample (``sas_model.order.order_loss``) and its log terms."""
        device = self.schedule.betas.device
        out = self.order(normalise_image(image.to(device)))
        terms = order_loss(
            out,
            occlusion.to(device),
            self.cfg.order.object_weight,
            junction_weight=self.cfg.cues.junction_weight,
        )
        cue_weight = self.cfg.cues.weight
        total = sum(v if not k.startswith("cue/") else cue_weight * v for k, v in terms.items())
        logs = {"order": float(total.detach())}
        logs.update({f"order/{name}": float(value.detach()) for name, value in terms.items()})
        return total, logs
