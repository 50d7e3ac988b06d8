"""A minimal-budget nnU-Net v2 trainer for the CPU prediction benchmark (NOT part of autoseg).

benchmarks/setup_nnunet_venv.sh copies this file into the nnU-Net venv's
``nnunetv2/training/nnUNetTrainer/variants/benchmarking/`` folder, where ``nnUNetv2_train`` and
``nnUNetv2_predict`` find trainer classes by name. It differs from nnU-Net's own
``nnUNetTrainer_1epoch`` only in the budget: 1 epoch of 10 training + 2 validation iterations and
no final validation of the fold's cases (autoseg is trained with ``--no-validate`` likewise).
nnU-Net's shipped short trainers run 250 iterations per epoch, which took over 13 minutes without
finishing one epoch on the shared 2-core CPU; its benchmark trainers require CUDA and save no
checkpoint. The network, plans and inference path are nnU-Net's unchanged, so prediction with
this trainer's checkpoint times exactly what ``nnUNetTrainer`` would (only the weights differ).
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_1epoch_10iter_noval(nnUNetTrainer):
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (benchmark trainer)")
