"""Several attribute models as one: :class:`EnsembleModel`.

An ensemble is an ordinary model file (``arch: "ensemble"``) whose ``members`` field lists
each member's own settings. Its input is one face crop at the largest member input size,
normalised with that member's mean/std; inside, each member gets the crop resized to its own
size and normalised its own way, and the ensemble's output is the logit of the members' mean
probability. So `predict`, `eval`, `export` (one ONNX graph) and thresholds work on an
ensemble exactly as on a single model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceattr.errors import ModelError
from faceattr.models.head import tta_off
from faceattr.models.info import ModelInfo

ENSEMBLE_ARCH = "ensemble"
# The member settings an ensemble file keeps (with the member's name and digest in "source").
MEMBER_FIELDS = ("arch", "num_features", "dropout", "img_size", "mean", "std", "tta", "dataset",
                 "created", "faceattr_version")  # fmt: skip


def _log_sigmoid(z: torch.Tensor) -> torch.Tensor:
    # Written out (not F.logsigmoid) so the ONNX graph is stable for any |z| too.
    return torch.clamp(z, max=0.0) - torch.log(1.0 + torch.exp(-torch.abs(z)))


def _log_sum_exp(v: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(v))) over the first dimension, never overflowing or giving -inf."""
    top = v.max(dim=0).values
    return top + torch.log(torch.exp(v - top).sum(dim=0))


class EnsembleModel(nn.Module):
    """``members`` (each ``[B, 3, S_i, S_i] -> logits [B, A]``) behind one input.

    The input is ``[B, 3, S, S]`` normalised with ``mean``/``std``. Member ``i`` sees it
    resized to its ``img_size`` (bilinear, antialiased) and normalised with its own
    mean/std. The output is ``logit(mean_i sigmoid(logits_i))``, computed in log space so
    confident members do not overflow. ``tta`` ("flip") averages each face with its mirror
    image in eval mode, as :class:`~faceattr.models.head.AttributeModel` does.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        member_infos: Sequence[ModelInfo],
        *,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        if len(members) != len(member_infos) or len(members) < 2:
            raise ValueError("an ensemble needs two or more members, each with its info")
        self.members = nn.ModuleList(members)
        self.arch = ENSEMBLE_ARCH
        self.num_attributes = int(member_infos[0].num_attributes)
        self.img_size = int(img_size)
        self.member_sizes = [int(i.img_size) for i in member_infos]
        self.tta: str = "none"
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        for k, info in enumerate(member_infos):
            m_mean = torch.tensor(info.mean, dtype=torch.float32).view(1, 3, 1, 1)
            m_std = torch.tensor(info.std, dtype=torch.float32).view(1, 3, 1, 1)
            # x_member = (x * std + mean - m_mean) / m_std, per channel. Resizing first is the
            # same: bilinear weights sum to one, so they commute with a per-channel affine map.
            self.register_buffer(f"scale{k}", std_t / m_std, persistent=False)
            self.register_buffer(f"shift{k}", (mean_t - m_mean) / m_std, persistent=False)
        for m in self.members:
            m.tta = "none"  # type: ignore[assignment]  # TTA is the ensemble's, once for all

    def _inputs(self, x: torch.Tensor) -> Iterator[tuple[nn.Module, torch.Tensor]]:
        for k, member in enumerate(self.members):
            size = self.member_sizes[k]
            xk = x
            if size != x.shape[-1] or size != x.shape[-2]:
                xk = F.interpolate(
                    x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
                )
            yield member, xk * getattr(self, f"scale{k}") + getattr(self, f"shift{k}")

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's logits ``[M, B, A]`` for the ensemble's input ``x`` (no TTA)."""
        return torch.stack([member(xk) for member, xk in self._inputs(x)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] (normalised as the ensemble's info says) -> logits [B, A]."""
        flip = self.tta == "flip" and not self.training
        if flip:
            x = torch.cat([x, x.flip(-1)])
        z = self.member_logits(x).float()
        # log(mean p) - log(mean (1 - p)); the log(M) terms cancel.
        logits = _log_sum_exp(_log_sigmoid(z)) - _log_sum_exp(_log_sigmoid(-z))
        if flip:
            n = len(x) // 2
            logits = (logits[:n] + logits[n:]) / 2
        return logits

    def no_tta(self) -> contextlib.AbstractContextManager[EnsembleModel]:
        """As :meth:`AttributeModel.no_tta`: forward passes see exactly the given images."""
        return tta_off(self)

    def extra_repr(self) -> str:
        return f"members={len(self.members)}, img_size={self.img_size}, tta={self.tta!r}"


def member_info(ensemble: ModelInfo, k: int) -> ModelInfo:
    """Member ``k`` of an ensemble's info as a ModelInfo of its own (the ensemble's
    attributes and crop, the member's architecture and preprocessing)."""
    assert ensemble.members is not None
    m = ensemble.members[k]
    settings = {f: m[f] for f in MEMBER_FIELDS if f in m}  # missing ones: ModelInfo's defaults
    return ModelInfo(attributes=list(ensemble.attributes), crop=list(ensemble.crop), **settings)


def ensemble_info(
    infos: Sequence[ModelInfo], sources: Sequence[dict[str, Any]], *, tta: str = "none"
) -> ModelInfo:
    """The info of an ensemble of models described by ``infos`` (each with a ``source``
    entry: the file's name and digest). The members must predict the same attributes from
    the same crop; the ensemble's input is the largest member input, normalised as that
    member's. Thresholds are left at 0.5 (tune them on held-out data)."""
    if len(infos) < 2:
        raise ModelError("An ensemble needs at least two models.")
    for info, src in zip(infos, sources, strict=True):
        if info.arch == ENSEMBLE_ARCH:
            raise ModelError(
                f"{src['file']} is an ensemble already; an ensemble cannot be a member of another.",
                "List the models it was made of instead.",
            )
    first = infos[0]
    for info, src in zip(infos[1:], sources[1:], strict=True):
        if list(info.attributes) != list(first.attributes):
            raise ModelError(
                f"{src['file']} predicts other attributes than {sources[0]['file']} "
                f"({len(info.attributes)} vs {len(first.attributes)}, or another order).",
                "Ensemble models trained on the same attributes.",
            )
        if [round(v, 6) for v in info.crop] != [round(v, 6) for v in first.crop]:
            raise ModelError(
                f"{src['file']} sees another part of the face (crop {info.crop}) than "
                f"{sources[0]['file']} (crop {first.crop}).",
                "Ensemble models trained with the same crop (`data.crop=...`).",
            )
    largest = max(infos, key=lambda i: i.img_size)
    members = []
    for info, src in zip(infos, sources, strict=True):
        entry: dict[str, Any] = {f: getattr(info, f) for f in MEMBER_FIELDS}
        entry["source"] = dict(src)
        members.append(entry)
    licenses = sorted({i.license for i in infos if i.license})
    datasets = sorted({i.dataset for i in infos})
    return ModelInfo(
        arch=ENSEMBLE_ARCH,
        attributes=list(first.attributes),
        num_features=0,
        dropout=0.0,
        img_size=largest.img_size,
        crop=list(first.crop),
        mean=list(largest.mean),
        std=list(largest.std),
        thresholds=None,
        tta=tta,
        train_positive_rates=first.train_positive_rates,
        dataset=datasets[0] if len(datasets) == 1 else "+".join(datasets),
        license=" ".join(licenses) or None,
        members=members,
    )


def build_ensemble(info: ModelInfo) -> EnsembleModel:
    """An untrained :class:`EnsembleModel` with the members ``info`` describes."""
    from faceattr.models.registry import create_model

    assert info.members is not None
    infos = [member_info(info, k) for k in range(len(info.members))]
    members = [
        create_model(
            i.arch,
            i.num_attributes,
            num_features=i.num_features,
            dropout=i.dropout,
            pretrained=False,
            img_size=i.img_size,
        )
        for i in infos
    ]
    return EnsembleModel(members, infos, img_size=info.img_size, mean=info.mean, std=info.std)


def combine(
    models: Sequence[nn.Module], infos: Sequence[ModelInfo], info: ModelInfo
) -> EnsembleModel:
    """An :class:`EnsembleModel` of loaded ``models`` (their ``infos``), for ``info``
    (from :func:`ensemble_info`)."""
    return EnsembleModel(list(models), list(infos), img_size=info.img_size, mean=info.mean,
                         std=info.std)  # fmt: skip
