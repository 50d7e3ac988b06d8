"""Training losses: soft Dice + cross-entropy with deep supervision, region losses, and the losses
chosen by name (``--loss``).
"""
