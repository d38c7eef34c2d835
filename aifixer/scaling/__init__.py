"""The farm's two other systems: CPU levels on pods, and (later) forecast-driven replicas.

`levels`: Prometheus' CPU alerts, through Alertmanager and `aifixer web`, set one label
on the pod they name (`aifixer.io/cpu-level: low|moderate|high` by default), so other
tools can select pods by load level.
"""
