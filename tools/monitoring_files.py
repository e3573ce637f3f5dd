"""Write deploy/monitoring/alerts.yml and grafana-dashboard.json from a parameter file.

    .venv/bin/python tools/monitoring_files.py [parameters/churn.yaml]

A test checks the committed files equal this output for parameters/churn.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlfolio import config
from mlfolio.monitor import alerts, dashboard

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    params = argv[0] if argv else str(ROOT / "parameters/churn.yaml")
    cfg = config.load(params)
    mon = cfg.monitoring
    files = {
        alerts.DEFAULT_FILE: alerts.rules_yaml(alerts.alert_rules(mon, registry=cfg.registry)),
        dashboard.DEFAULT_FILE: dashboard.dashboard_json(dashboard.for_monitoring(mon)),
    }
    for name, text in files.items():
        path = ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
