"""The policy compiler's stages, in the order controller.compiler.policy runs them.

Each stage is an immutable object with a full build (`build`) and an incremental update
(`update`, from the previous compilation's stage object and what changed) that give the same
tables; a stage that nothing it depends on changed is the previous object itself.

- policies:    policies by namespace, rule references, egress named-port rules, ipBlock prefixes
- identities:  pod identities, their namespaces/labels/pods, label indexes, the identity catalogue
- selection:   namespace index, which policies select which identities, selector peers -> identities
- named_ports: egress named ports resolved on their destination pods (and the exact prefixes needed)
- cidr:        CIDR identities of the policy prefixes, longest-prefix match and ipBlock carving
- ipcache:     the cluster-wide ipcache (prefixes, node and pod addresses) and each node's view
- entries:     per-rule and per-endpoint policy entries, and each node's endpoints

Cross-compilation caches live in the builder's controller.compiler.generations.GenerationCache,
never in a class or module.
"""
