"""contrastive_jax: SimCLR v1/v2 and SupCon in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name='contrastive_jax',
    version='0.1.0',
    description='Contrastive self-supervised learning (SimCLR v1/v2, SupCon) in JAX/Flax.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['contrastive_jax', 'contrastive_jax.*']),
    package_data={'contrastive_jax': ['data/embedded/*.npz', 'data/embedded/*.md',
                                      'data/embedded/WORDNET_LICENSE',
                                      'kernels/*.cc']},
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.6.0',
        'flax>=0.10.0',
        'optax>=0.2.4',
        'dm-pix>=0.4.3',
        'orbax-checkpoint>=0.11.0',
        'etils[epath]>=1.5',  # run files on gs:// (contrastive_jax/files.py); orbax needs it too
        'ml-collections>=0.1.1',
        'absl-py>=1.0',
        'numpy>=1.26',
        # The text modality's tokenizers (contrastive_jax/text/tokenizer.py).
        'tokenizers>=0.15',
        'tensorboardX>=2.6',
        'pillow>=9',  # tensorboardX encodes the image summaries (augmented pairs) with it
        # eval's embedding plots (PCA, t-SNE): the main job's output includes them.
        'matplotlib>=3.7',
        'scikit-learn>=1.3',
        'tensorflow-datasets>=4.9.3',
        # The host input pipeline only; the training path never imports it.
        'tensorflow-cpu>=2.16; platform_machine=="x86_64"',
        'tensorflow>=2.16; platform_machine!="x86_64"',
        # oneDNN for CPU convolutions (kernels/onednn_conv.py, compiled on first
        # use; without it or without g++, models fall back to kernels/cpu_conv.py).
        # The GOMP CPU-only build: the newer 'onednn' wheels need SYCL and TBB.
        'onednn-cpu-gomp==2023.2.0; platform_system=="Linux" and platform_machine=="x86_64"',
        'onednn-devel-cpu-gomp==2023.2.0; platform_system=="Linux" and platform_machine=="x86_64"',
    ],
    extras_require={
        # importlib_resources: tfds' store_as_tfds_dataset, which writes the tests'
        # small prepared dataset of photos of varying sizes.
        # gensim: tests/test_word2vec.py loads the saved vectors with it and reads its
        # word-similarity / analogy benchmark files.
        'dev': ['pytest>=7', 'importlib_resources', 'gensim>=4.3'],
        # word2vec's evaluation files (gensim's test data) and the text tokenizers.
        'text': ['gensim>=4.3', 'tokenizers>=0.15'],
    },
)
