"""The built-in plugins, one module per plugin (or per family sharing its code).

Each module declares everything about its plugins in one place — `SPECS`, a tuple of
`harness.registry.PluginSpec`: parameters (with the shared types of `_types`), capabilities,
cross-parameter validation and the hooks the core calls — and names its implementation
lazily, so reading the declarations never imports torch. The registry registers every
module here that defines `SPECS`; a site package adds its own through the entry-point group
`lorid_harness.plugins` (CONTRIBUTING.md).
"""
