"""One canonical small setting per registered method: the table the method contracts run.

A method is not registered without a row here (`test_every_registered_method_has_a_row`).
Each row is the job sections that switch the method on, on top of `BASE_JOB` (the bundled
fixture, one worker, batches of 32); `OFF` says how the job writes the method switched off.
"""

from __future__ import annotations

from helpers import FIXTURE_TEST, FIXTURE_TRAIN

BASE_JOB = {
    "data": {
        "source": "parquet",
        "train": str(FIXTURE_TRAIN),
        "val": str(FIXTURE_TEST),
        "augment": {"random_crop_padding_px": 2, "horizontal_flip": True},
    },
    "model": {"name": "resnet9", "width_multiplier": 0.25},
    "train": {
        "epochs": 2,
        "global_batch_size": 32,
        "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "label_smoothing": 0.1,
        "seed": 0,
    },
    "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 1}},
    "run": {"name": "contract", "storage_path": "runs"},
}

CANONICAL: dict[str, dict] = {
    "etpp": {
        "curriculum": {
            "preset": "custom",
            "mode": "fft",
            "budget_epochs": 1.5,
            "randaugment": False,
            "stages": [{"resolution_px": 20, "replay_factor": 2}, {"resolution_px": 28}],
            "replay": {"capacity_samples": 64},
        }
    },
    "progressive": {
        "curriculum": {
            "preset": "progressive",
            "num_stages": 2,
            "size_px": [20, 28],
            "mixup_alpha": [0.0, 0.4],
            "size_multiple_px": 4,
        }
    },
    "random_erasing": {"random_erasing": {"probability": 0.5, "max_count": 2}},
    "mixup": {"mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}},
    "ema": {"tricks": {"ema": {"every_steps": 1}}},
    "tta": {"tricks": {"tta": {"flip": True, "translate_px": 2}}},
    "ghost_bn": {"tricks": {"ghost_bn": {"virtual_batch_size": 8}}},
    "frozen_bn_scale": {"tricks": {"frozen_bn_scale": {}}},
    "whitening": {"tricks": {"whitening": {"sample_images": 64}}},
    "dirac_init": {"tricks": {"dirac_init": True}},
    "alternating_flip": {"tricks": {"alternating_flip": True}},
    "lookahead": {"tricks": {"lookahead": {"k": 2}}},
    "infobatch": {"infobatch": {"prune_ratio": 0.5, "delta": 0.75}},
    "agvm": {"agvm": {"start_step": 0, "interval": 2}},
}

# Methods whose workers need Ray itself (a driver-side actor), not only torch.
NEEDS_RAY = {"infobatch"}
