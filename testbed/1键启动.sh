#!/bin/bash
# 一键启动 ComfyUI（Qwen-Image-2512）
# 激活虚拟环境
source /root/venv/bin/activate
cd /root/ComfyUI

# 启动服务（无 GPU 的测试机上用 --cpu）
python main.py --listen 0.0.0.0 --port 8188 --cpu
