"""tissue_oracle.prompts"""
