"""Training building blocks: optimizer construction and learning-rate schedules.

The training loop builds its optimizer with :func:`rayaccel.train.optim.build_optimizer` and,
every step, writes ``lr_multiplier(progress_epochs, schedule)`` from
:mod:`rayaccel.train.schedules` into it with :func:`rayaccel.train.optim.set_lr`.
"""
