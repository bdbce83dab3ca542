"""Model structure: how channels pass through layers, which channels are coupled,
and what a model costs.

* :mod:`~tfstatprune.structure.rules`: the one registry ``{LayerClass:
  ChannelRule}`` (MRO lookup, no silent overwrites); a new layer kind is one
  entry there (:func:`register_channel_rule`, example in that module);
* :mod:`~tfstatprune.structure.walk`: the one walk over a model's layer calls
  and the one leaf-layer iteration;
* :mod:`~tfstatprune.structure.channels`: the channel graph built by that
  walk and the union-find of coupled channels;
* :mod:`~tfstatprune.structure.cost`: parameters, FLOPs, non-zero FLOPs.

Read by mask consistency (:mod:`tfstatprune.keras.consistency`), the
BatchNormalization lookup of network slimming and the after-pruning
adjustments, and :func:`tfstatprune.shrink`.
"""

from tfstatprune.structure.channels import ChannelGraph, channel_graph
from tfstatprune.structure.cost import count_flops, kernel_parameters, nonzero_flops
from tfstatprune.structure.rules import (
    ChannelRule,
    is_elementwise,
    register_channel_rule,
    require_rule,
    rule_for,
    unregister_channel_rule,
)
from tfstatprune.structure.walk import LayerCall, layer_calls, leaf_layers, require_graph, unwrap

__all__ = [
    "ChannelGraph",
    "ChannelRule",
    "LayerCall",
    "channel_graph",
    "count_flops",
    "is_elementwise",
    "kernel_parameters",
    "layer_calls",
    "leaf_layers",
    "nonzero_flops",
    "register_channel_rule",
    "require_graph",
    "require_rule",
    "rule_for",
    "unregister_channel_rule",
    "unwrap",
]
