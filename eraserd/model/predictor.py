"""Inference: route to a cluster (``clustering.Routing``), add its prompt, apply its head."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..clustering import Routing
from ..data.images import canonical_view
from ..errors import RegistryError
from ..manifest import Manifest
from ..registry import Registry
from .backbone import Backbone


@dataclass(frozen=True)
class Prediction:
    label: str
    label_index: int
    cluster: str
    version: int
    probability: float
    fallback: bool = False
    """The input's cluster is withdrawn (``Predictor.withdraw``): it was routed among the
    clusters still served."""


class ClustersUnavailable(Exception):
    """Every cluster is withdrawn from serving."""


class Predictor:
    """An immutable snapshot of one version: swapping versions means building a new one."""

    def __init__(
        self,
        backbone: Backbone,
        manifest: Manifest,
        routing: Routing,
        prompts: torch.Tensor,
        weights: torch.Tensor,
        biases: torch.Tensor,
    ):
        self.backbone = backbone
        self.version = manifest.version
        self.classes = list(manifest.classes)
        self.keys = list(manifest.keys)
        self.routing = routing
        self.prompts, self.weights, self.biases = prompts, weights, biases
        self.withdrawn: frozenset[str] = frozenset()
        self._allowed = list(range(len(self.keys)))

    def withdraw(self, keys) -> Predictor:
        """A snapshot of the same version that never answers with the clusters ``keys``:
        an input routed to one is routed again among the clusters still served."""
        out = copy.copy(self)
        out.withdrawn = frozenset(k for k in keys if k in self.keys)
        out._allowed = [i for i, k in enumerate(self.keys) if k not in out.withdrawn]
        return out

    @classmethod
    def load(cls, registry: Registry, backbone: Backbone, version: int | None = None) -> Predictor:
        m = registry.load(version)
        if m.backbone["fingerprint"] != backbone.fingerprint:
            raise RegistryError(
                f"version {m.version} was built with another backbone "
                f"({m.backbone['name']}); rebuild or fix backbone config"
            )
        protos = registry.get_tensors(m.prototypes, "prototypes")["prototypes"].numpy()
        route = m.routing
        if "points" in route:  # every cluster's points in one blob (older manifests)
            pts = registry.get_tensors(route["points"], "routing points")
            routing = Routing(
                protos,
                pts["points"].numpy().astype(np.float64),
                pts["owner"].numpy(),
                int(route["neighbors"]),
            )
        elif route.get("method") == "neighbors":
            points = []
            for c in m.clusters:
                if c.points is None:
                    raise RegistryError(
                        f"version {m.version}: cluster {c.key} has no routing points"
                    )
                blob = registry.get_tensors(c.points, f"cluster {c.key} routing points")
                points.append(blob["points"].numpy())
            owner = [np.full(len(p), k, dtype=np.int64) for k, p in enumerate(points)]
            routing = Routing(
                protos,
                np.concatenate(points).astype(np.float64),
                np.concatenate(owner),
                int(route["neighbors"]),
            )
        else:
            routing = Routing(protos)
        prompts, weights, biases = [], [], []
        for c in m.clusters:
            prompts.append(registry.get_tensors(c.prompt, f"cluster {c.key} prompt")["prompt"])
            head = registry.get_tensors(c.head, f"cluster {c.key} head")
            weights.append(head["weight"])
            biases.append(head["bias"])
        dev = backbone.device
        return cls(
            backbone,
            m,
            routing,
            torch.stack(prompts).to(dev),
            torch.stack(weights).to(dev),
            torch.stack(biases).to(dev),
        )

    @torch.no_grad()
    def predict_bytes(self, data: bytes) -> Prediction:
        view = canonical_view(data, self.backbone.image_size)
        feature = self.backbone.feature(view)[None, :]
        k = int(self.routing.route(feature)[0])
        fallback = False
        if self.withdrawn:
            if not self._allowed:
                raise ClustersUnavailable("every cluster is withdrawn from serving")
            # Route among the served clusters only, so a withdrawn cluster's members do not
            # even vote: the answer is what it would be without them.
            fallback = self.keys[k] in self.withdrawn
            k = int(self.routing.route(feature, self._allowed)[0])
        x = self.backbone.prepare_input(
            self.backbone.normalize(view.unsqueeze(0)) + self.prompts[k]
        )
        logits = F.linear(self.backbone.trainer(x).float(), self.weights[k], self.biases[k])[0]
        probs = logits.float().softmax(0)
        idx = int(probs.argmax())
        return Prediction(
            self.classes[idx], idx, self.keys[k], self.version, float(probs[idx]), fallback
        )
