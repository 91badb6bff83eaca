"""Fine-tuning: data (data.py), LoRA and adapters (lora.py), classification (classifier.py), the loop (trainer.py)."""
