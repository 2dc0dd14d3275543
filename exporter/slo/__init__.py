"""SLO rule generation: `bem-exporter slo-rules`.

`spec` reads the SLOs (flags or a TOML file) and validates them, `windows` holds Sloth's alert
windows and burn-rate factors, `sli` writes the SLIs in PromQL from the exporter's counters,
`rules` the rule groups in Sloth's shape and names, `render` the YAML. docs/slo.md explains
them to users.
"""
