"""Reinforcement-learning foundations: DP, tabular Q-learning/SARSA, DQN, REINFORCE (see docs/rl.md)."""
