"""An independent reading of Kubernetes NetworkPolicy and ClusterNetworkPolicy, for differential tests.

`evaluator` answers "is this connection allowed?" straight from raw API objects;
`cases` generates clusters (nodes, pods, host-network pods) and policies (Hypothesis
strategies) and turns them into raw objects. Neither imports anything from `controller`:
they must not share a bug with it.
"""
