"""Experiments: proving a change online (L7, L8).

`assignment` splits users into arms and a long-term holdout, `stats` decides, `simulator` plays
users from the synthetic ground truth against the served funnel, `feedback_loop` retrains on
the logs the system produced itself. Plain numpy/pandas: no Merlin or TensorFlow import here.
"""
