from memserve_router.cli import main

main()
