cd /work/runs/t32
export PYTHONPATH=/work/runs/t32/code
P=/work/main/.venv/bin/python
nice $P pilot.py A '{}' > pilot-A.log 2>&1
nice $P pilot.py B '{"decoder_lr_scale": 10}' > pilot-B.log 2>&1
nice $P pilot.py C '{"decoder_lr_scale": 10, "mask_stride": 2}' > pilot-C.log 2>&1
touch pilot.done
