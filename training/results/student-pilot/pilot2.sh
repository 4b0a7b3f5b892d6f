cd /work/runs/t32
export PYTHONPATH=/work/runs/t32/code
P=/work/main/.venv/bin/python
while pgrep -f "pilot.py C" > /dev/null; do sleep 5; done
nice $P pilot.py F '{"decoder_lr_scale": 10}' '{"mask_weight": 5}' > pilot-F.log 2>&1
nice $P pilot.py G '{}' '{"lr": 1e-3}' > pilot-G.log 2>&1
touch pilot2.done
