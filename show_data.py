"""혼공머신 7-1's first cells: `python show_data.py` draws the first ten training images with their labels
(samples.png, cmap='gray_r') and logs how many training images each class has (6,000 each in Fashion-MNIST).

Options: conf/show_data.yaml (`data=mnist`, `classes=ko`); the PNG goes to the Hydra run dir.
"""

from hgmldl.commands.show_data import main

if __name__ == "__main__":
    main()
