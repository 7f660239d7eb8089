"""The retraining job's alert: a JSON POST to a chat webhook when the job fails for good or its
quality gate refuses the new version (L7.3). The payload's `text` is what Slack- and
Mattermost-style incoming webhooks show; the other fields are for machines.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request


def send_alert(url: str, payload: dict, timeout_s: float) -> dict:
    """POSTs `payload` as JSON to `url`; what happened, for the job record: {"sent": True,
    "status": 200} or {"sent": False, "error": ...}. Never raises: a webhook that is down must
    not hide the job's own failure."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return {"url": url, "sent": True, "status": response.status}
    except urllib.error.HTTPError as e:
        return {"url": url, "sent": False, "status": e.code, "error": f"HTTP {e.code} {e.reason}"}
    except (urllib.error.URLError, OSError, ValueError) as e:     # refused, timed out, bad URL
        return {"url": url, "sent": False, "error": str(getattr(e, "reason", e))}
