from agent._cli import program

program()
