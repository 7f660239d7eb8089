"""Resilient retraining (L7.3): the pipeline's steps as a job with retries, timeouts, a quality
gate and atomic promotion into the served Triton repository, and an alert when it fails for good.

`steps` runs one step as a child process (timeout, process-group kill, backoff); `gate` compares
the new version with the served one; `alert` posts to a webhook; `job` ties them together.
"""
from recfunnel.retrain.alert import send_alert
from recfunnel.retrain.gate import GateDecision, QualityGate, gate_decision, served_evaluation
from recfunnel.retrain.job import (GATE_REFUSED, INTERRUPTED, PIPELINE_STEPS, PROMOTED,
                                   STEP_FAILED, Outcome, RetrainJob, retrain_job)
from recfunnel.retrain.steps import Attempt, RetryPolicy, Step, run_attempt, run_with_retries

__all__ = ["Attempt", "GATE_REFUSED", "GateDecision", "INTERRUPTED", "Outcome", "PIPELINE_STEPS",
           "PROMOTED", "QualityGate", "RetrainJob", "RetryPolicy", "STEP_FAILED", "Step",
           "gate_decision", "retrain_job", "run_attempt", "run_with_retries", "send_alert",
           "served_evaluation"]
