"""The course's tooling: the command line, the course runner and its website, the student
releases and autograding. Instructors and maintainers install it with the ``tools`` extras;
lessons never import it (they import only ``course_lib``), and Colab never installs its
dependencies."""
