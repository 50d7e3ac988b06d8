"""Training augmentation: nnU-Net's transforms on the CPU (batchgenerators) and on the training
device (torch), elastic deformation, and the cascade's previous-stage perturbation. Each
``*_device`` module is the torch twin of the CPU module beside it.
"""
