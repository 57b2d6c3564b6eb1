from gptcli.entry import main

main()
