"""adapt's Hydra sweeper (`hydra/sweeper=adapt_protocol`), found by Hydra's plugin scan.

Hydra only instantiates plugins that live in the `hydra_plugins` namespace package, so this thin
package holds the sweeper class; the protocol itself is stated once, in `adapt.runs.sweep`.
"""
