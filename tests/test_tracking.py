"""``monai.bundle run ... --tracking mlflow`` on a bundle's train.json: what is logged, and a training stopped by a
signal continues the same MLflow run when the same command runs again."""

from __future__ import annotations

import os
import signal

from bundle_cases import BUNDLE_TINY
from conftest import BUNDLES
from monai.bundle import ConfigWorkflow


def test_tracked_training_stopped_by_a_signal_continues_the_same_mlflow_run(tiny_data, tmp_path):
    from ignite.engine import Events
    from mlflow.tracking import MlflowClient

    def run(send_at=None):
        wf = ConfigWorkflow(
            config_file=str(BUNDLES / "unetr_btcv" / "configs" / "train.json"),
            workflow_type="train",
            tracking="mlflow",
            logging_file=False,
            **BUNDLE_TINY["unetr_btcv"],
            dataset_dir=str(tiny_data),
            ckpt_dir=str(tmp_path / "models"),
            output_dir=str(tmp_path / "runs"),
            max_epochs=3,
            val_interval=1,
        )
        wf.initialize()
        if send_at:
            trainer = wf.parser.get_parsed_content("train#trainer")
            trainer.add_event_handler(
                Events.ITERATION_COMPLETED(once=send_at), lambda e: os.kill(os.getpid(), signal.SIGTERM)
            )
        wf.run()
        wf.finalize()

    run(send_at=4)  # 3 iterations an epoch: stopped inside epoch 2
    run()
    client = MlflowClient("sqlite:///" + str(tmp_path / "runs" / "mlruns.db"))
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == ["UNETR BTCV multi-organ segmentation"]
    runs = client.search_runs([experiments[0].experiment_id])
    assert len(runs) == 1, "the resumed training continues the run of the first"
    run_id = runs[0].info.run_id
    assert runs[0].info.status == "FINISHED"

    def steps(metric):
        return [m.step for m in client.get_metric_history(run_id, metric)]

    assert steps("train_loss") == list(range(1, 10)), "every iteration logged once, none lost or repeated"
    assert steps("val_mean_dice") == [1, 2, 3]
    assert steps("lr_group_0") == list(range(1, 10))
    artifacts = sorted(a.path for a in client.list_artifacts(run_id))
    assert "model.pt" in artifacts and any(a.startswith("config_") and a.endswith(".json") for a in artifacts)
