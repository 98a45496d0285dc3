module govectors

go 1.22
